"""MkDocs hook (mkdocs.yml ``hooks:``): the method catalogue, generated from the registry at build time.

Adds ``methods/index.md`` (the table of ``python -m vlprompt methods --format markdown``, each method linked to
its page) and ``methods/<name>.md`` (the row's facts, the preset, and the method's docstrings as written) to the
site. Nothing is written into ``docs/``: the pages cannot drift from the code, and there is nothing to commit.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

from mkdocs.structure.files import File

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # document this checkout, whatever the environment's install points at


def _fence(text: str) -> str:
    return "```text\n" + inspect.cleandoc(text) + "\n```\n"


def index_page(rows: list[dict]) -> str:
    from vlprompt.analysis import catalogue

    counts = {kind: sum(r["checked"] == kind for r in rows) for kind in ("fixture", "hand-computed", "reading")}
    return (
        "# Method catalogue\n\n"
        f"Every registered method ({len(rows)}), generated from the registry when this site was built; "
        "`python -m vlprompt methods --format markdown` (or `json`) prints the same table. "
        "How each column is derived: `vlprompt.analysis.catalogue`; adding a method and its entry: "
        "[Adding a method](../adding_a_method.md).\n\n"
        f"**Checked**: *fixture* ({counts['fixture']}): compared with outputs of the official code, committed as "
        f"fixtures; *hand-computed* ({counts['hand-computed']}): its tests compute its equations by hand; "
        f"*reading* ({counts['reading']}): no official code exists, the method is a documented reading of the "
        "paper. **Published**: averages over the papers' datasets (ViT-B/16, 16 shots) from `config/published/`.\n\n"
        + catalogue.to_markdown(rows, link="{name}.md")
    )


def method_page(r: dict) -> str:
    from vlprompt.methods import get_method

    cls = get_method(r["method"])
    module = sys.modules[cls.__module__]
    facts = [
        ("paper", r["paper"]),
        ("family", r["family"] or "—"),
        ("what it does", r["description"]),
        ("reads", ", ".join(r["reads"])),
        ("protocols", ", ".join(r["protocols"])),
        ("reference code", f"{r['reference']} at {r['commit'] or 'a commit not recorded'}" if r["reference"] else "—"),
        ("checked", r["checked"] + (f" ({r['note']})" if r["note"] else "")),
        ("fixtures", ", ".join(f"`{f}`" for f in r["fixtures"]) or "—"),
        ("tests", ", ".join(f"`{t}`" for t in r["tests"]) or "—"),
        ("cost", r["cost"]),
        ("module", f"`src/{cls.__module__.replace('.', '/')}.py`"),
    ]
    lines = [f"# `{r['method']}`\n", "| property | value |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', chr(92) + '|')} |" for k, v in facts]
    fields = dataclasses.fields(cls.Config) if dataclasses.is_dataclass(cls.Config) else ()
    preset = [(f.name, f.default) for f in fields]
    if preset:
        lines += ["", "## Preset", "", "| hyperparameter | default |", "|---|---|"]
        lines += [f"| `{name}` | `{value!r}` |" for name, value in preset]
    lines += ["", "## From the source", ""]
    if module.__doc__:
        lines.append(_fence(module.__doc__))
    if cls.__doc__ and cls.__doc__ != module.__doc__:
        lines.append(_fence(cls.__doc__))
    return "\n".join(lines) + "\n"


def on_files(files, config):
    from vlprompt.analysis import catalogue

    rows = catalogue.catalogue()
    files.append(File.generated(config, "methods/index.md", content=index_page(rows)))
    for r in rows:
        files.append(File.generated(config, f"methods/{r['method']}.md", content=method_page(r)))
    return files
