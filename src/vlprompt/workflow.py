"""Glue between Snakemake's ``config`` and the library (called once when the Snakefile is parsed)."""

from __future__ import annotations

import json
from pathlib import Path

from vlprompt.config import validate


def resolve_config(config: dict, base_dir: str | Path | None = None) -> tuple[dict, dict[str, str]]:
    """Validate and complete ``config``; write it where the jobs read it; return (config, paths).

    Jobs read the config Snakemake resolved (``--configfile`` and ``--config`` overrides included) from a
    JSON file. Jobs of the experiment (train, evaluate, aggregate, report) read
    ``<results_root>/<experiment>/config.json``: another experiment resolved meanwhile (even by a dry
    run) cannot change what a running pipeline's later jobs read. Jobs whose outputs experiments share
    (prepare, split, extract) read ``<results_root>/config.json``, the same path for every experiment, so
    moving between experiments re-runs none of them by itself: what re-runs one is its params' hash of
    the settings that change its outputs (``config.stage_hash``), and experiments that share its outputs
    agree on those settings. Files are rewritten only when their content changes.

    ``report.notes_file`` is a path from the working directory; one that is not there but is in
    ``base_dir`` (the workflow's folder, for ``snakemake -d elsewhere``) is made absolute.

    Returns ``(config, {"shared": path, "experiment": path})``.
    """
    from vlprompt.io import atomic_write_text

    cfg = validate(dict(config))
    notes = cfg.get("report", {}).get("notes_file")
    if notes and base_dir is not None and not Path(notes).exists() and (Path(base_dir) / notes).exists():
        cfg["report"]["notes_file"] = str((Path(base_dir) / notes).resolve())
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    paths = {"shared": Path(cfg["results_root"]) / "config.json",
             "experiment": Path(cfg["results_root"]) / cfg["experiment"] / "config.json"}
    for path in paths.values():
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
    return cfg, {k: str(v) for k, v in paths.items()}
