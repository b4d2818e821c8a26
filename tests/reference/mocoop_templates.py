"""Rewrite ``src/vlprompt/data/mocoop_templates.json`` from a checkout of MoCoOp's official code.

    python tests/reference/mocoop_templates.py --refs DIR

DIR holds the checkout ``DIR/mocoop`` of dyabel/mocoop at ``COMMIT``. Each ``configs/datasets/<file>.yaml`` is read
as YAML (``TRAINER.MoCoOp.LASP_PROMPTS`` and ``GROUPS``), as the reference's yacs config reads it: a ``#`` after
whitespace starts a comment, so a line ``"a cropped photo of the {}.", #`` is a list item with a trailing comment,
and only lines that *start* with ``#`` are left out. Reading the file line by line instead (dropping every line
with a ``#``) loses three of ImageNet's 32 templates and leaves a list that does not match its 20 groups.

The ImageNet variants' files (ImageNet-A/R/Sketch/V2) list 22 templates in 16 groups, but a model evaluated on a
variant is the one trained on ImageNet (its 20 experts), so the variants keep pointing at ImageNet's entry. The
``pocket`` entry is this project's and is kept as it is. Nothing of the reference is copied except these data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

REPOSITORY, COMMIT = "dyabel/mocoop", "04b5d2a"
TARGET = Path(__file__).resolve().parents[2] / "src" / "vlprompt" / "data" / "mocoop_templates.json"
FILES = {  # the reference's dataset config -> vlprompt's registry name
    "caltech101": "Caltech101",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101",
    "oxford_flowers": "Flowers102",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "sun397": "SUN397",
    "ucf101": "UCF101",
    "imagenet": "ImageNet",
}


def templates_and_groups(text: str) -> tuple[list[str], list[int]]:
    """The templates and group sizes of one of the reference's dataset configs (YAML text); a ValueError when the
    groups do not sum to the number of templates (the reference would index past its list)."""
    section = yaml.safe_load(text)["TRAINER"]["MoCoOp"]
    templates, groups = list(section["LASP_PROMPTS"]), list(section["GROUPS"])
    if sum(groups) != len(templates) or min(groups) < 1:
        raise ValueError(f"groups {groups} (sum {sum(groups)}) do not cover the {len(templates)} templates")
    return templates, groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=Path, required=True, help="folder holding the checkout 'mocoop'")
    args = parser.parse_args(argv)
    repo = args.refs / "mocoop"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    if not head.startswith(COMMIT):
        raise SystemExit(f"{repo} is at {head.strip() or '?'}, expected {REPOSITORY} at {COMMIT}")
    data = json.loads(TARGET.read_text())
    for stem, name in FILES.items():
        templates, groups = templates_and_groups((repo / "configs" / "datasets" / f"{stem}.yaml").read_text())
        data["datasets"][name] = {"templates": templates, "groups": groups}
    TARGET.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
