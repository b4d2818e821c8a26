"""The description store: class descriptions per dataset, in the format of CuPL's published files.

One JSON file per dataset maps each class name to a list of sentences describing it (Pratt et al., "What does a
platypus look like? Generating customized prompts for zero-shot image classification", ICCV 2023; the files of
sarahpratt/CuPL, ``all_prompts/full_prompts/*.json``). MSGCoOp and KAPT read them (and CuPL in the next wave).

Where a file comes from:

- the pocket world: ``class_descriptions/pocket.json``, shipped, generated from each class's colour and shape by the
  rule :func:`pocket_descriptions` (a stand-in for the language model that writes the real datasets'
  descriptions; every pocket dataset has the same classes, so they share the file);
- a real dataset: ``<dir>/<Dataset>.json`` in ``$VLPROMPT_DESCRIPTIONS`` when set, else in the shipped
  ``class_descriptions/`` folder. The published LLM-written files carry no licence, so none is shipped: the README next
  to the store lists where each one is published, its checksum and the name to save it under.

Class names match after lower-casing and turning underscores into spaces (CuPL's keys are plain names).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

STORE_DIR = Path(__file__).resolve().parent / "class_descriptions"
POCKET_FILE = "pocket.json"

#: The documented rule that stands in for a language model on the pocket world: five sentences per class
#: "<colour> <shape>", each naming the class's two attributes (colour and shape) as a description would.
POCKET_RULE = (
    "a {colour} {shape}.",
    "a photo of a {colour} {shape}.",
    "a {shape} drawn in {colour}.",
    "a {colour} shape, a {shape}.",
    "a {shape} with a {colour} colour.",
)


class DescriptionError(ValueError):
    """Descriptions missing for a dataset or a class; the message names the file and the fix."""


def key(classname: str) -> str:
    return re.sub(r"\s+", " ", classname.replace("_", " ")).strip().lower()


def pocket_descriptions(classname: str) -> list[str]:
    """The pocket rule's sentences for a class "<colour> <shape>" of the pocket world."""
    from vlprompt.data.pocket import COLOURS, SHAPES

    parts = key(classname).split(" ")
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise DescriptionError(f"{classname!r} is not a pocket class '<colour> <shape>' (colours: "
                               f"{sorted(COLOURS)}, shapes: {list(SHAPES)})")
    return [s.format(colour=parts[0], shape=parts[1]) for s in POCKET_RULE]


def pocket_store() -> dict[str, list[str]]:
    """The rule applied to every class of the largest pocket world (what ``pocket.json`` holds)."""
    from vlprompt.data.pocket import COLOURS, SHAPES

    return {f"{c} {s}": pocket_descriptions(f"{c} {s}") for c in COLOURS for s in SHAPES}


def store_file(dataset: str) -> Path:
    """Where the description file of ``dataset`` is looked for."""
    if dataset.startswith("pocket"):
        return STORE_DIR / POCKET_FILE
    root = os.environ.get("VLPROMPT_DESCRIPTIONS")
    return (Path(root) if root else STORE_DIR) / f"{dataset}.json"


@lru_cache(maxsize=16)
def _read(path: str) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in data.values()):
        raise DescriptionError(f"{path} is not a description file (a JSON object: class name -> list of sentences)")
    return {key(k): list(v) for k, v in data.items()}


def load_descriptions(dataset: str | None, classnames: list[str]) -> dict[str, list[str]]:
    """Sentences for each of ``classnames`` (keyed by the names as given) from the store's file of ``dataset``."""
    if dataset is None:
        raise DescriptionError("class descriptions need the dataset's name (MethodContext.dataset) or "
                               "MethodContext.descriptions")
    path = store_file(dataset)
    if not path.is_file():
        raise DescriptionError(
            f"no class descriptions for dataset {dataset!r}: {path} does not exist. Save the dataset's description "
            f"file (CuPL's format, class name -> sentences) there or in the folder named by $VLPROMPT_DESCRIPTIONS; "
            f"src/vlprompt/data/class_descriptions/README.md lists where each one is published")
    store = _read(str(path))
    missing = [c for c in classnames if not store.get(key(c))]
    if missing:
        raise DescriptionError(f"{path} has no descriptions for {len(missing)} class(es) of {dataset!r}, e.g. "
                               f"{missing[:5]}; add them (class name -> list of sentences)")
    return {c: store[key(c)] for c in classnames}


def descriptions_for(given: dict[str, list[str]] | None, dataset: str | None,
                     classnames: list[str]) -> dict[str, list[str]]:
    """``given`` (MethodContext.descriptions) restricted to ``classnames``, else the store's."""
    if given is None:
        return load_descriptions(dataset, classnames)
    lookup = {key(k): v for k, v in given.items()}
    missing = [c for c in classnames if not lookup.get(key(c))]
    if missing:
        raise DescriptionError(f"the given descriptions lack classes {missing[:5]}")
    return {c: lookup[key(c)] for c in classnames}
