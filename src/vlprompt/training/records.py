"""A finished run's files: ``model.pt`` and ``metrics.json`` written atomically, and checked when read.

A run is finished when its ``metrics.json`` exists; that file records the size and checksum of ``model.pt``, so a
reader notices a damaged or replaced model and says which file to rebuild.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vlprompt.experiment.config import method_config_hash, method_settings
from vlprompt.io import (
    CorruptArtefactError,
    atomic_torch_save,
    atomic_write_json,
    file_record,
    provenance,
    read_artefact_json,
    verify_file,
)


def is_complete(cfg: dict, run_dir: Path, method_name: str, dataset: str, shots: int) -> bool:
    """A run directory whose metrics, with this config's settings for the run, and intact model are there."""
    try:
        metrics = read_artefact_json(run_dir / "metrics.json")
        verify_file(run_dir / "model.pt", metrics["artefacts"]["model.pt"])
    except (FileNotFoundError, CorruptArtefactError, KeyError):
        return False
    return metrics.get("config_hash") == method_config_hash(cfg, method_name, dataset, shots)


def load_model_state(run_dir: Path, device: torch.device) -> dict:
    """A finished run's ``model.pt``, checked against the size and checksum its ``metrics.json`` recorded."""
    metrics = read_artefact_json(run_dir / "metrics.json")
    record = metrics.get("artefacts", {}).get("model.pt")
    if record is None:
        raise CorruptArtefactError(run_dir / "metrics.json", "no record of model.pt (written by an older version)")
    verify_file(run_dir / "model.pt", record)
    return torch.load(run_dir / "model.pt", map_location=device, weights_only=False)


def save_run(
    cfg: dict,
    out_dir: Path,
    metrics: dict,
    method,
    mcfg,
    dataset: str,
    shots: int,
    seed: int,
    train_names: list[str],
    train_info: dict,
    seconds: dict,
    prov: dict,
    identity: dict | None = None,
) -> dict:
    """Complete a run's metrics with what identifies it, write ``model.pt`` then ``metrics.json`` (each
    atomically: a finished run is one whose metrics.json exists) and drop the training checkpoint. ``identity``
    replaces fields of the identity (a domain-adaptation run: ``dataset`` its pair, ``target``)."""
    hyperparameters = asdict(mcfg)
    metrics.update(
        method=method.name,
        dataset=dataset,
        train_dataset=dataset,
        shots=shots,
        seed=seed,
        protocol=cfg["protocol"],
        experiment=cfg["experiment"],
        config_hash=method_config_hash(cfg, method.name, dataset, shots),
        hyperparameters=hyperparameters,
        overrides=method_settings(cfg, method.name, dataset, shots),
        method_info=method.run_info(),
        new_class_names=method.new_classnames_given,  # names of new classes seen as text in training (0: none)
        trained=method.needs_training,
        train=train_info,
        seconds=seconds,
        provenance=prov,
    )
    metrics.update(identity or {})
    _dataset_provenance(cfg, metrics, dataset)
    atomic_torch_save(
        out_dir / "model.pt",
        {
            "method": method.name,
            "state": method.trainable_state(),
            "hyperparameters": hyperparameters,
            "classnames": train_names,
            "provenance": prov,
        },
    )
    metrics["artefacts"] = {"model.pt": file_record(out_dir / "model.pt")}  # checked by every reader of model.pt
    atomic_write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def save_transfer(
    cfg: dict,
    out: str | Path,
    metrics: dict,
    method_name: str,
    dataset: str,
    target: str,
    shots: int,
    seed: int,
    trained: bool,
    backbone,
    device,
) -> dict:
    """A transfer evaluation's metrics completed with what identifies it (``dataset`` is the target) and its
    provenance, written atomically to ``out``."""
    prov = provenance(**backbone.provenance(), device=str(device))
    metrics.update(
        method=method_name,
        dataset=target,
        train_dataset=dataset,
        shots=shots,
        seed=seed,
        protocol=cfg["protocol"],
        experiment=cfg["experiment"],
        trained=trained,
        config_hash=method_config_hash(cfg, method_name, dataset, shots),
        provenance=prov,
    )
    _dataset_provenance(cfg, metrics, target)
    atomic_write_json(out, metrics)
    return metrics


def _dataset_provenance(cfg: dict, metrics: dict, dataset: str) -> None:
    """A user dataset's record (its key, root, split, conversions, template, fallbacks) in the run's metrics."""
    from vlprompt.data.registry import provenance

    record = provenance(cfg, dataset)
    if record is not None:
        metrics["dataset_provenance"] = record


def asdict(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)
