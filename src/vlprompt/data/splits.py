"""Split files, the base/new class split and the few-shot sampler, with Dassl/CoOp semantics.

- A split file is CoOp's ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``.
- Few-shot sampling follows Dassl's ``generate_fewshot_dataset``: items are grouped by label in
  order of first appearance; for each label, ``random.sample(items, K)`` from Python's ``random``
  seeded with the run seed (a label with fewer than K items keeps all of them); the validation
  subset takes ``min(K, 4)`` per label and continues the *same* random stream, as the reference
  does. Sampling is over all classes; the base/new cut comes afterwards.
- Base/new follows CoCoOp's ``subsample_classes``: labels sorted; base = first ceil(n/2), new =
  the rest; each relabelled from 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from vlprompt.io import atomic_write_json, read_json

Row = list  # [relpath, label, classname]
SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """A split file or few-shot request is invalid; the message names what and how to fix it."""


def read_split(path: str | Path) -> dict[str, list[Row]]:
    path = Path(path)
    if not path.is_file():
        raise SplitError(
            f"split file {path} does not exist; prepare the dataset first (`python -m vlprompt prepare --dataset ...`)"
        )
    split = read_json(path)
    missing = [s for s in SPLITS if s not in split]
    if missing:
        raise SplitError(f"split file {path} lacks {missing}; expected keys {list(SPLITS)}")
    for name in SPLITS:
        for row in split[name][:1]:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[1], int)):
                raise SplitError(f"split file {path}: {name} rows must be [relpath, label, classname], got {row!r}")
    return {s: [list(r) for r in split[s]] for s in SPLITS}


def classnames(rows: Sequence[Row]) -> list[str]:
    """Class names ordered by label id (labels must be 0..n-1)."""
    names: dict[int, str] = {}
    for _, label, name in rows:
        names.setdefault(label, name)
    if sorted(names) != list(range(len(names))):
        raise SplitError(f"labels must be 0..{len(names) - 1}, got {sorted(names)[:10]}...")
    return [names[i] for i in range(len(names))]


def _by_label(rows: Sequence[Row]) -> dict[int, list[Row]]:
    groups: dict[int, list[Row]] = {}
    for row in rows:  # insertion order = order of first appearance, as Dassl's defaultdict
        groups.setdefault(row[1], []).append(row)
    return groups


def _sample(rows: Sequence[Row], shots: int, rng: random.Random, strict: bool, what: str) -> list[Row]:
    out = []
    for label, items in _by_label(rows).items():
        if len(items) >= shots:
            out.extend(rng.sample(items, shots))
        elif strict:
            raise SplitError(
                f"class {items[0][2]!r} (label {label}) has only {len(items)} {what} "
                f"images, fewer than the {shots} shots requested; lower `shots` or "
                f"set `fewshot.allow_fewer: true` to keep all of them as Dassl does"
            )
        else:
            out.extend(items)
    return out


def fewshot_sample(split: dict[str, list[Row]], shots: int, seed: int, strict: bool = True) -> dict[str, list[Row]]:
    """K train items and min(K, 4) val items per class, as Dassl draws them for ``seed``."""
    if shots < 1:
        raise SplitError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    return {
        "train": _sample(split["train"], shots, rng, strict, "train"),
        "val": _sample(split["val"], min(shots, 4), rng, strict, "val"),
    }


def base_new_labels(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Sorted label ids split into base (first ceil(n/2)) and new (the rest)."""
    ordered = sorted(set(labels))
    m = math.ceil(len(ordered) / 2)
    return ordered[:m], ordered[m:]


def subsample_classes(rows: Sequence[Row], keep: Sequence[int]) -> list[Row]:
    """Rows whose label is in ``keep``, relabelled 0..len(keep)-1 in the order of ``keep``."""
    relabel = {old: new for new, old in enumerate(keep)}
    return [[p, relabel[y], name] for p, y, name in rows if y in relabel]


def write_fewshot(path: str | Path, subset: dict[str, list[Row]], shots: int, seed: int) -> None:
    """Write a subset with the classes that got fewer than ``shots`` images (only with ``allow_fewer``)."""
    counts: dict[str, int] = {}
    for row in subset["train"]:
        counts[row[2]] = counts.get(row[2], 0) + 1
    short = sorted(name for name, n in counts.items() if n < shots)
    atomic_write_json(path, {"shots": shots, "seed": seed, "short_classes": short, **subset})


def read_fewshot(path: str | Path, allow_fewer: bool = False) -> dict:
    """A stored few-shot subset; one sampled with ``allow_fewer`` is refused by an experiment without it."""
    from vlprompt.io import read_artefact_json

    subset = read_artefact_json(path)
    missing = [k for k in ("shots", "seed", "train", "val") if k not in subset]
    if missing:
        from vlprompt.io import CorruptArtefactError

        raise CorruptArtefactError(path, f"lacks {missing}")
    if subset.get("short_classes") and not allow_fewer:
        raise SplitError(
            f"{path} keeps fewer than {subset['shots']} images for {len(subset['short_classes'])} "
            f"classes (e.g. {subset['short_classes'][0]!r}; sampled by an experiment with "
            f"fewshot.allow_fewer: true); lower `shots` or set `fewshot.allow_fewer: true`"
        )
    return subset


def write_classes(path: str | Path, split: dict[str, list[Row]], base_new=None) -> dict:
    """The class names and the base/new labels (``base_new``: given ones, e.g. a user dataset's; default
    :func:`base_new_labels`, or a function of the class names returning them or None)."""
    names = classnames(split["train"] + split["val"] + split["test"])
    given = base_new(names) if callable(base_new) else base_new
    base, new = given or base_new_labels(range(len(names)))
    info = {"classnames": names, "base": base, "new": new}
    atomic_write_json(path, info)
    return info
