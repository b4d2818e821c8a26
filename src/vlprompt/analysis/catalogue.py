"""The method catalogue: one row per registered method, generated from the registry, never written by hand.

What a row says and where it comes from:

- name, paper, family, description, preset epochs: the method's class (``vlprompt.methods``);
- what it reads: the class's declarations (``inputs``, ``reads_unlabelled``, ``reads_test_views``,
  ``reads_multitask_prompt``) and, for the parts of the bank and the description store a method asks for on
  demand, its module's source (``ctx.split("train_plain")``, ``descriptions_for(...)``);
- the protocols it supports: ``supports_new_classes`` and the inputs it needs (``unlabelled``, ``sources``);
- its reference code and commit, its fixtures and tests: ``vlprompt/methods/catalogue.json``, the one place for
  what a class does not say (a central file rather than a class attribute, so that adding it touched no method
  file); a method without an entry takes its parent's (``tests/test_catalogue.py`` checks the file against the
  registry, the fixtures and the methods' docstrings);
- how it is checked: "fixture" when outputs of the official code are committed and compared, "reading" when no
  official code exists (a documented reading of the paper), "hand-computed" otherwise (its tests compute the
  method's equations by hand);
- its cost class: from its inputs and whether it trains;
- the published numbers: ``config/published/`` (``vlprompt.analysis.report.published``), averages only.

``python -m vlprompt methods --format markdown|json`` prints it; the documentation's catalogue page is the same
markdown.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import sys
from functools import cache
from pathlib import Path

from vlprompt.analysis.report import published as published_numbers
from vlprompt.methods import get_method, list_methods
from vlprompt.methods.base import Method

ENTRIES = Path(__file__).resolve().parents[1] / "methods" / "catalogue.json"
KEYS = ("reference", "commit", "fixtures", "tests", "note")
PROTOCOLS = ("base2new", "fewshot", "crossdataset", "domain_generalization")
# parts of the feature bank a method loads on demand (MethodContext.load_split) -> what the catalogue calls them
SPLITS = {
    "train_plain": "few-shot images un-augmented",
    "val_full": "whole validation split",
    "test": "test split (ImageNet setting)",
}
COLUMNS = ("method", "paper", "family", "reads", "protocols", "reference", "checked", "cost", "published")


class CatalogueError(ValueError):
    """The catalogue's data file is missing an entry or names a key it does not know."""


@cache
def entries() -> dict[str, dict]:
    data = json.loads(ENTRIES.read_text())["methods"]
    for name, entry in data.items():
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise CatalogueError(f"{ENTRIES}: method {name!r} has unknown key(s) {unknown}; known: {list(KEYS)}")
    return data


def lineage(cls: type[Method]) -> list[type[Method]]:
    """``cls`` and the registered methods it derives from, nearest first (an ``*_in_loop`` wraps ``cls.method``)."""
    out: list[type[Method]] = []
    for c in cls.__mro__:
        if isinstance(c, type) and issubclass(c, Method) and c is not Method and c.name and c not in out:
            out.append(c)
        wrapped = c.__dict__.get("method")
        if isinstance(wrapped, type) and issubclass(wrapped, Method):
            out += [w for w in lineage(wrapped) if w not in out]
    return out


def entry(name: str) -> dict:
    """The data-file entry of ``name``, each missing key taken from its nearest parent that has it."""
    merged: dict = {}
    for c in lineage(get_method(name)):
        for key, value in entries().get(c.name, {}).items():
            merged.setdefault(key, value)
    if not merged:
        raise CatalogueError(
            f"method {name!r} has no entry in {ENTRIES.name} (nor has a parent): add its reference, commit, "
            "fixtures and tests there"
        )
    return {key: merged.get(key, [] if key in ("fixtures", "tests") else None) for key in KEYS}


def _source(cls: type[Method]) -> str:
    return "\n".join(inspect.getsource(sys.modules[c.__module__]) for c in lineage(cls))


def reads(cls: type[Method]) -> list[str]:
    """What the method reads, in words."""
    out = ["images (encoder in the loop)" if cls.inputs == "images" else "feature bank"]
    source = _source(cls)
    out += [what for split, what in SPLITS.items() if re.search(rf"\.split\(\s*[\"']{split}[\"']", source)]
    if "descriptions_for(" in source:
        out.append("class descriptions")
    if "differential_descriptions(" in source:
        out.append("differential descriptions")
    if "unseen_classnames" in source:
        out.append("names of unseen classes")
    for flag, what in (
        (cls.reads_unlabelled, "unlabelled images"),
        (cls.reads_test_views, "test views"),
        (cls.reads_multitask_prompt, "multitask prompt"),
        (cls.reads_meta_prompt, "meta-learned prompt (pretraining pool)"),
    ):
        if flag:
            out.append(what)
    return out


def protocols(cls: type[Method]) -> list[str]:
    """The protocols the method runs in; a method that cannot classify unseen classes has no New accuracy under
    base2new and cannot transfer to another dataset's classes."""
    if cls.supports_new_classes:
        out = list(PROTOCOLS)
    else:
        out = ["base2new (base only)", "fewshot", "domain_generalization (same classes only)"]
    if cls.inputs == "features":  # the training.adaptation runner: feature-bank methods
        out.append("domain_adaptation")
    needs = []
    if cls.reads_unlabelled:
        needs.append("`unlabelled`")
    if cls.reads_multitask_prompt:
        needs.append("`sources`")
    return out + ([f"needs {' and '.join(needs)}"] if needs else [])


def checked(item: dict) -> str:
    if item["fixtures"]:
        return "fixture"
    return "reading" if item["reference"] is None else "hand-computed"


def cost(cls: type[Method]) -> str:
    """A coarse cost class: what one run spends its time on (a preset with ``epochs`` trains by SGD)."""
    epochs = next((f.default for f in dataclasses.fields(cls.Config) if f.name == "epochs"), None)
    if cls.reads_test_views:
        base = "test-time: a tuning step per test image over its views"
    elif cls.inputs == "images":
        base = "heavy: image encoder in every step (GPU)"
    elif not cls.needs_training:
        base = "none: no training, one pass over the test set"
    elif epochs is None:
        base = "light: fitted on the bank (closed form or search)"
    else:
        base = "light: SGD on the cached bank"
    if cls.reads_multitask_prompt:
        base += " + a multitask stage"
    if cls.reads_meta_prompt:
        base += " + a meta stage per backbone"
    return base + (f", preset {epochs} epochs" if epochs and cls.needs_training else "")


def published(name: str, directory: Path | None = None) -> dict[str, dict]:
    """The published averages of ``name`` (ViT-B/16, 16 shots) per protocol: metric -> value, and the source."""
    out: dict[str, dict] = {}
    for protocol in published_numbers.FILES:
        table = published_numbers.load(protocol, directory)
        if table is None:
            continue
        rows = table[(table.method == name) & (table.dataset == "Average")]
        if len(rows):
            values = {r.metric: float(r.published) for r in rows.itertuples() if not math.isnan(float(r.published))}
            out[protocol] = {**values, "source": str(rows.source.iloc[0])}
    return out


def row(name: str, directory: Path | None = None) -> dict:
    cls = get_method(name)
    item = entry(name)
    return {
        "method": name,
        "paper": cls.paper,
        "family": cls.family,
        "description": cls.description,
        "module": cls.__module__,
        "reads": reads(cls),
        "protocols": protocols(cls),
        "reference": item["reference"],
        "commit": item["commit"],
        "checked": checked(item),
        "fixtures": item["fixtures"],
        "tests": item["tests"],
        "note": item["note"],
        "cost": cost(cls),
        "published": published(name, directory),
    }


def catalogue(directory: Path | None = None) -> list[dict]:
    """Every registered method's row, by name."""
    return [row(name, directory) for name in list_methods()]


def _published_text(values: dict[str, dict]) -> str:
    parts = []
    for protocol, numbers in values.items():
        if protocol == "base2new":
            shown = "/".join(f"{numbers[k]:.2f}" for k in ("base_acc", "new_acc", "hm") if k in numbers)
            parts.append(f"base2new base/new/HM {shown}")
        elif "all_acc" in numbers:
            parts.append(f"{protocol} {numbers['all_acc']:.2f}")
        parts[-1] += f" ({numbers['source']})"
    return "; ".join(parts) or "—"


def _reference_text(r: dict) -> str:
    if r["reference"] is None:
        return "none (documented reading)"
    commit = f" @ `{r['commit'][:7]}`" if r["commit"] else " (commit not recorded)"
    return f"[{r['reference']}](https://github.com/{r['reference']}){commit}"


def to_markdown(rows: list[dict], link: str | None = None) -> str:
    """The catalogue as one markdown table; ``link`` (e.g. ``"{name}.md"``) links each method to its page."""
    header = ["method", "paper", "family", "reads", "protocols", "reference code", "checked", "cost", "published"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        name = f"[`{r['method']}`]({link.format(name=r['method'])})" if link else f"`{r['method']}`"
        cells = [
            name,
            r["paper"],
            r["family"] or "—",
            ", ".join(r["reads"]),
            ", ".join(r["protocols"]),
            _reference_text(r),
            r["checked"],
            r["cost"],
            _published_text(r["published"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2) + "\n"
