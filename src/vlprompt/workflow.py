"""Glue between Snakemake's ``config`` and the library (called once when the Snakefile is parsed)."""

from __future__ import annotations

import json
from pathlib import Path

from vlprompt.config import validate


def resolve_config(config: dict) -> tuple[dict, str]:
    """Validate and complete ``config``; write it where the jobs read it; return (config, path).

    Rules pass ``<results_root>/config.json`` to the CLI, so every job sees exactly the config that
    Snakemake resolved (``--configfile`` and ``--config`` overrides included). The path is the same
    for every experiment, so moving between experiments re-runs nothing by itself: what re-runs a
    job is its params' hash of the settings that change its outputs (``config.stage_hash``,
    ``config.method_config_hash``). A copy goes to ``<results_root>/<experiment>/config.json`` for
    the record. Files are rewritten only when their content changes.
    """
    from vlprompt.io import atomic_write_text

    cfg = validate(dict(config))
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    shared = Path(cfg["results_root"]) / "config.json"
    for path in (shared, Path(cfg["results_root"]) / cfg["experiment"] / "config.json"):
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
    return cfg, str(shared)
