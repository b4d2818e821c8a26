"""Glue between Snakemake's ``config`` and the library (called once when the Snakefile is parsed)."""

from __future__ import annotations

import json
from pathlib import Path

from vlprompt.config import validate


def resolve_config(config: dict) -> tuple[dict, str]:
    """Validate and complete ``config``; write it as ``results/<experiment>/config.json``.

    Rules pass this file to the CLI, so every job sees exactly the config Snakemake resolved
    (``--configfile`` and ``--config`` overrides included). It is rewritten only when its content
    changes, and it is not a rule input: what re-runs a job is its ``config_hash`` param.
    """
    cfg = validate(dict(config))
    path = Path(cfg["results_root"]) / cfg["experiment"] / "config.json"
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        from vlprompt.io import atomic_write_text

        atomic_write_text(path, text)
    return cfg, str(path)
