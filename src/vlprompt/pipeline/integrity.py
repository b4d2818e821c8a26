"""Artefacts that no longer match their records, found before a pipeline runs.

Snakemake decides what to re-run from file times, so a truncated or overwritten output whose time did
not change would be used as it is. Every artefact with a record is checked here when the Snakefile is
parsed (cheaply: sizes and JSON syntax; readers also check sha256): a feature bank against its sidecar,
a run's ``model.pt`` against its ``metrics.json``, the JSON artefacts by parsing them. A bad one is moved
aside (``<file>.corrupt``) so that the run rebuilds it and everything downstream, and named in one line.
"""

from __future__ import annotations

import json
from pathlib import Path


def problem(path: Path) -> str | None:
    """What is wrong with one artefact of the pipeline, or None (missing files are not a problem here)."""
    if not path.exists():
        return None
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            return f"not valid JSON ({err})"
        return None
    record = _record(path)
    if record is not None and path.stat().st_size != record["bytes"]:
        return f"{path.stat().st_size} bytes, {record['bytes']} when it was written"
    return None


def _record(path: Path) -> dict | None:
    """The size/checksum record of ``path``: its sidecar's (feature banks) or its run's metrics (model.pt)."""
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".json")
        key = None
    elif path.name == "model.pt":
        sidecar, key = path.with_name("metrics.json"), "model.pt"
    else:
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if key is None:
        return meta.get("file")
    return meta.get("artefacts", {}).get(key)


def check(paths: list[Path], skip_under: Path | None = None) -> list[tuple[Path, str]]:
    """``(path, problem)`` for every artefact among ``paths`` that does not match its record.

    ``skip_under``: a folder whose files are not checked (prepared datasets: written last and atomically
    by ``prepare``, and a real dataset's split file can be large).
    """
    out = []
    for path in paths:
        if skip_under is not None and Path(path).is_relative_to(skip_under):
            continue
        found = problem(Path(path))
        if found:
            out.append((Path(path), found))
    return out


def move_aside(path: Path) -> Path:
    """Rename a corrupt artefact to ``<name>.corrupt`` (kept for inspection) and return the new path."""
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)  # Snakemake then re-runs its job, which replaces the job's other outputs too
    return target
