"""The multitask stage of a ``reads_multitask_prompt`` method (MVLPT): one prompt trained on the few-shot data of
every source dataset at once, which the method's runs start from."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from vlprompt.experiment import grid
from vlprompt.experiment.config import method_config_hash, method_settings
from vlprompt.io import atomic_torch_save, atomic_write_json, file_record, provenance
from vlprompt.training.context import build_context, start_job
from vlprompt.training.feature_runs import feature_loop
from vlprompt.training.records import asdict


def train_multitask(
    cfg: dict, method_name: str, shots: int, seed: int, out_dir: str | Path, progress: bool = True
) -> dict:
    """Train the stage for (shots, seed) on the config's ``sources`` and write ``out_dir/model.pt`` with
    ``metrics.json`` (resumable from ``out_dir/checkpoint.pt``). The method class merges the sources
    (``merge_sources``) and gives the stage's settings (``source_config``)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, cls = start_job(cfg, method_name, seed)
    sources = grid.multitask_sources(cfg)
    if not cls.reads_multitask_prompt or not sources:
        raise ValueError(f"{method_name} has no multitask stage, or the config lists no `sources`")
    mcfg = cls.source_config(cls.make_config(method_settings(cfg, method_name, None, shots)))
    contexts = [build_context(cfg, source, cls, shots, seed, device, for_training=False)[0] for source in sources]
    ctx = importlib.import_module(cls.__module__).merge_sources(contexts)
    method = cls(mcfg, ctx).to(device)
    info = feature_loop(method, ctx, mcfg, out_dir / "checkpoint.pt", cfg["train"]["checkpoint_every"], progress)
    prov = provenance(**ctx.backbone.provenance(), device=str(device))
    atomic_torch_save(
        out_dir / "model.pt",
        {
            "method": method_name,
            "state": method.trainable_state(),
            "classnames": ctx.classnames,
            "sources": sources,
            "provenance": prov,
        },
    )
    metrics = {
        "method": method_name,
        "stage": "multitask",
        "sources": sources,
        "shots": shots,
        "seed": seed,
        "classes": len(ctx.classnames),
        "images": int(ctx.train_features.shape[1]),
        "config_hash": method_config_hash(cfg, method_name, None, shots),
        "hyperparameters": asdict(mcfg),
        "train": info,
        "seconds": round(time.time() - t0, 2),
        "provenance": prov,
        "artefacts": {"model.pt": file_record(out_dir / "model.pt")},
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
