"""The multitask stage of a ``reads_multitask_prompt`` method (MVLPT, PVP): one prompt trained on the few-shot data of
every source dataset at once, which the method's runs start from. Feature-bank methods (MVLPT) train on the
sources' merged banks; methods with the image encoder in the loop (PVP) on the sources' merged few-shot images in
the image loop (:func:`vlprompt.training.image_runs.image_loop`), classes merged by name in both."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import torch

from vlprompt.clip.features import ImageList
from vlprompt.data import registry
from vlprompt.data.splits import read_fewshot, subsample_classes
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_config_hash, method_settings
from vlprompt.io import atomic_torch_save, atomic_write_json, file_record, provenance, read_artefact_json
from vlprompt.training.context import build_context, method_context, start_job, training_classes
from vlprompt.training.feature_runs import feature_loop
from vlprompt.training.image_runs import image_loop, training_transform
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
    if cls.inputs == "images":  # the image loop (PVP's VPT-deep prompts)
        return _train_multitask_images(cfg, cls, mcfg, sources, shots, seed, out_dir, device, t0, progress)
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


def merged_image_rows(cfg: dict, sources: list[str], shots: int, seed: int) -> tuple[Path, list, list[str]]:
    """The sources' few-shot training images as one training set: (a folder every source's images lie below,
    rows [path below it, label, name], class names). Classes are merged by name in first-occurrence order, as
    :func:`vlprompt.methods.mvlpt.merge_sources` merges the banks; each source keeps its training classes."""
    roots = [registry.image_root(cfg, source).resolve() for source in sources]
    base = Path(os.path.commonpath([str(r) for r in roots]))
    names: dict[str, int] = {}
    rows = []
    for source, root in zip(sources, roots, strict=True):
        classes = read_artefact_json(grid.classes_path(cfg, source))
        keep = training_classes(cfg, classes)
        index = [names.setdefault(classes["classnames"][i], len(names)) for i in keep]
        fewshot = read_fewshot(grid.fewshot_path(cfg, source, shots, seed), cfg["fewshot"].get("allow_fewer", False))
        prefix = root.relative_to(base)
        rows += [[str(prefix / p), index[y], name] for p, y, name in subsample_classes(fewshot["train"], keep)]
    return base, rows, list(names)


def _train_multitask_images(cfg, cls, mcfg, sources, shots, seed, out_dir: Path, device, t0, progress) -> dict:
    if len({registry.reads_exif(cfg, s) for s in sources}) > 1:
        raise ValueError("the sources mix a user's image folders with prepared datasets; list sources of one kind")
    base, rows, classnames = merged_image_rows(cfg, sources, shots, seed)
    ctx = method_context(cfg, sources[0], classnames, device, seed)
    method = cls(mcfg, ctx).to(device)
    transform = training_transform(ctx.backbone, mcfg, cfg["features"]["crop_scale_min"])
    if hasattr(method, "source_procedure"):  # the method's own procedure over the source tasks (DAM-VP's Reptile)
        info = method.source_procedure(source_tasks(cfg, sources, shots, seed, mcfg, transform, device))
        info = {"loss_history": info["loss_history"], "steps_per_epoch": len(sources), "curves": []}
    else:
        info = image_loop(
            method,
            ctx,
            mcfg,
            base,
            rows,
            transform,
            out_dir / "checkpoint.pt",
            cfg["train"]["checkpoint_every"],
            cfg["features"]["workers"],
            progress,
            exif=registry.reads_exif(cfg, sources[0]),
        )
    prov = provenance(**ctx.backbone.provenance(), device=str(device))
    atomic_torch_save(
        out_dir / "model.pt",
        {
            "method": cls.name,
            "state": method.trainable_state(),
            "classnames": classnames,
            "sources": sources,
            "provenance": prov,
        },
    )
    metrics = {
        "method": cls.name,
        "stage": "multitask",
        "sources": sources,
        "shots": shots,
        "seed": seed,
        "classes": len(classnames),
        "images": len(rows),
        "config_hash": method_config_hash(cfg, cls.name, None, shots),
        "hyperparameters": asdict(mcfg),
        "train": {key: info[key] for key in ("loss_history", "steps_per_epoch", "curves")},
        "seconds": round(time.time() - t0, 2),
        "provenance": prov,
        "artefacts": {"model.pt": file_record(out_dir / "model.pt")},
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def source_tasks(cfg: dict, sources: list[str], shots: int, seed: int, mcfg, transform, device) -> list[dict]:
    """One task per source for a method's own procedure: its class names and ``batch(step)``, a batch of its
    few-shot images (``mcfg.batch_size``, drawn from (seed, step), augmented by ``transform``) with their labels."""
    tasks = []
    for index, source in enumerate(sources):
        base, rows, names = merged_image_rows(cfg, [source], shots, seed)
        exif = registry.reads_exif(cfg, source)

        def batch(step: int, base=base, rows=rows, exif=exif, index=index):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + index)
            pick = torch.randperm(len(rows), generator=gen)[: mcfg.batch_size].tolist()
            images = ImageList(base, [rows[i][0] for i in pick], transform, view=f"meta{seed}/{step}", exif=exif)
            x = torch.stack([images[k] for k in range(len(pick))])
            return x.to(device), torch.tensor([rows[i][1] for i in pick], device=device)

        tasks.append({"classnames": names, "batch": batch})
    return tasks
