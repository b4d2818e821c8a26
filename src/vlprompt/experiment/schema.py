"""The config schema (``schemas/config.schema.yaml``): where it is, its defaults. The single description of every key;
:mod:`vlprompt.experiment.checks` judges a config against it and :mod:`vlprompt.experiment.config` loads one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _fill_defaults(cfg: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if isinstance(cfg.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(cfg[key], sub)
    for key in ("features", "train", "fewshot", "pocket", "method_overrides", "report", "stats"):
        if key in schema.get("properties", {}) and key not in cfg:
            cfg[key] = {}
            _fill_defaults(cfg[key], schema["properties"][key])


def fill_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` (valid against the schema) with the schema's defaults filled in."""
    cfg = copy.deepcopy(cfg)
    _fill_defaults(cfg, load_schema())
    return cfg
