"""The reference of every config key, rendered from the schema as ``config/README.md``.

The Snakemake workflow catalogue shows a workflow's ``config/README.md`` as its configuration guide. It is
generated from ``schemas/config.schema.yaml`` (``python scripts/config_readme.py`` rewrites it;
``tests/test_config_reference.py`` fails when the file and the schema disagree), so it cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from vlprompt.experiment.config import load_schema

INTRO = """\
# Configuring the workflow

A config is the whole experiment: this folder's `config.yaml` is the default one (the pocket demo), the other
files are the published protocols and the pocket studies; `snakemake --configfile config/<file>.yaml` runs one.
Used as a Snakemake module from a folder of your own (`docs/workflow_module.md`), your folder's
`config/config.yaml` is the experiment and every path below (`data_root`, `results_root`, `reports_root`,
`report.notes_file`) is relative to that folder.

Unknown keys are errors. Keys marked *required* have no default; the others take the default shown.
`method_overrides.<method>` sets a method's own hyperparameters (the fields of its `Config` dataclass, listed on
the method's page), optionally `by_shots` and `by_dataset`.

This file is generated from `src/vlprompt/experiment/schemas/config.schema.yaml` by
`python scripts/config_readme.py`; edit the schema, not this file.

| key | type | default | description |
|---|---|---|---|
"""


def _type(sub: dict) -> str:
    if "enum" in sub:
        return " | ".join(json.dumps(v) for v in sub["enum"])
    types = sub.get("type", "")
    types = types if isinstance(types, list) else [types]
    if "array" in types and isinstance(sub.get("items"), dict) and sub["items"].get("type"):
        types = [f"array of {sub['items']['type']}" if t == "array" else t for t in types]
    return " | ".join(str(t) for t in types if t) or "see description"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def keys(schema: dict | None = None, prefix: str = "") -> Iterator[tuple[str, dict, bool]]:
    """(dotted key, its schema, required) for every key of the schema, parents before children; a map of names
    (``method_overrides``) shows its entries as ``<name>``."""
    schema = load_schema() if schema is None else schema
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        yield prefix + name, sub, name in required
        if "properties" in sub:
            yield from keys(sub, f"{prefix}{name}.")
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in extra:
            yield from keys(extra, f"{prefix}{name}.<name>.")


def render(schema: dict | None = None) -> str:
    """The text of ``config/README.md``: the introduction, then one table row per key."""
    rows = []
    for key, sub, required in keys(schema):
        default = "*required*" if required else (f"`{json.dumps(sub['default'])}`" if "default" in sub else "")
        rows.append(f"| `{key}` | {_cell(_type(sub))} | {default} | {_cell(sub.get('description', ''))} |")
    return INTRO + "\n".join(rows) + "\n"
