"""Rewrite the description store's manifest ``src/vlprompt/data/class_descriptions/sources.json`` from checkouts of
the repositories that publish class descriptions.

    python tests/reference/description_sources.py --refs DIR

DIR holds ``DIR/CuPL`` (sarahpratt/CuPL), ``DIR/MSGCoOp`` (Rain-Bus/MSGCoOp), ``DIR/CoPrompt`` (ShuvenduRoy/CoPrompt)
and ``DIR/TFUP`` (wlb12345/TFUP) at the
commits in ``SOURCES``. For every file a method's reference reads, the manifest records its path in the repository,
its git blob id (what ``git ls-tree`` lists, so a file too large to fetch is still named and checkable), and, where
the file is in the checkout, its SHA-256 and its numbers of classes and sentences. No description is copied: the
files carry no licence that allows it (see the store's README); users save them under ``<source>/<Dataset>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

TARGET = Path(__file__).resolve().parents[2] / "src" / "vlprompt" / "data" / "class_descriptions" / "sources.json"
CUPL_FULL = "all_prompts/full_prompts/{}_prompts_full.json"
SOURCES = {
    "cupl": {
        "folder": "CuPL",
        "repository": "sarahpratt/CuPL",
        "commit": "719619c",
        "licence": "none (the repository has no licence file): not redistributable, not shipped",
        "about": "GPT-3 answers to CuPL's questions, tens of sentences per class (Pratt et al., ICCV 2023); ImageNet "
        "is the file classify_imagenet.py reads (PATH_TO_PROMPTS), not all_prompts/full_prompts/",
        "files": {
            "Caltech101": CUPL_FULL.format("cal"),
            "DTD": CUPL_FULL.format("texture"),
            "FGVCAircraft": CUPL_FULL.format("airplane"),
            "Flowers102": CUPL_FULL.format("flower"),
            "Food101": CUPL_FULL.format("food"),
            "OxfordPets": CUPL_FULL.format("pets"),
            "StanfordCars": CUPL_FULL.format("cars"),
            "SUN397": CUPL_FULL.format("sun"),
            "UCF101": CUPL_FULL.format("ucf"),
            "ImageNet": "imagenet_prompts/CuPL_image_prompts.json",
        },
        "aliases": {
            "ImageNetV2": "ImageNet",
            "ImageNetSketch": "ImageNet",
            "ImageNetA": "ImageNet",
            "ImageNetR": "ImageNet",
        },
    },
    "msgcoop": {
        "folder": "MSGCoOp",
        "repository": "Rain-Bus/MSGCoOp",
        "commit": "a298669",
        "licence": "the folder's LICENSE is CoOp's MIT licence (Copyright (c) 2021 Kaiyang Zhou); whether it covers "
        "the descriptions is undecided: not shipped",
        "about": "GPT-4.1 descriptions, the top 4 per class, that MSGCoOp's PromptLearner reads "
        "(./desc/gpt-4.1/descriptions_top4/<DATASET.NAME>.json)",
        "files": {
            name: f"MSGCoOp/desc/gpt-4.1/descriptions_top4/{ref}.json"
            for name, ref in {
                "Caltech101": "Caltech101",
                "DTD": "DescribableTextures",
                "EuroSAT": "EuroSAT",
                "FGVCAircraft": "FGVCAircraft",
                "Food101": "Food101",
                "ImageNet": "ImageNet",
                "ImageNetA": "ImageNetA",
                "ImageNetR": "ImageNetR",
                "ImageNetSketch": "ImageNetSketch",
                "ImageNetV2": "ImageNetV2",
                "Flowers102": "OxfordFlowers",
                "OxfordPets": "OxfordPets",
                "SUN397": "SUN397",
                "StanfordCars": "StanfordCars",
                "UCF101": "UCF101",
            }.items()
        },
        "aliases": {},
    },
    "coprompt": {
        "folder": "CoPrompt",
        "repository": "ShuvenduRoy/CoPrompt",
        "commit": "a2a6c12",
        "licence": "MIT (Copyright (c) 2024 Shuvendu Roy); not shipped: users save the files themselves",
        "about": "LLM descriptions, the same number per class, that CoPrompt's and HiCroPL's trainers read "
        "(gpt_file/<dataset>_prompt.json)",
        "files": {
            name: f"gpt_file/{ref}_prompt.json"
            for name, ref in {
                "Caltech101": "caltech",
                "DTD": "dtd",
                "EuroSAT": "eurosat",
                "FGVCAircraft": "fgvc",
                "Food101": "food101",
                "ImageNet": "imagenet",
                "ImageNetA": "imagenet_a",
                "ImageNetR": "imagenet_r",
                "ImageNetSketch": "imagenet_sketch",
                "ImageNetV2": "imagenetv2",
                "Flowers102": "oxford_flowers",
                "OxfordPets": "oxford_pets",
                "StanfordCars": "stanford_cars",
                "SUN397": "sun397",
                "UCF101": "ucf101",
            }.items()
        },
        "aliases": {},
    },
    "tfup": {
        "folder": "TFUP",
        "repository": "wlb12345/TFUP",
        "commit": "d95d4d3",
        "licence": "none (the repository has no licence file): not shipped",
        "about": "gpt-3.5-turbo-instruct answers in CuPL's format for TFUP's domain-adaptation benchmarks (none of "
        "them a registered dataset: a user dataset of that name reads them)",
        "files": {
            "DomainNet": "gpt3_prompts/prompts/gpt-3.5-turbo-instruct_domainnet.json",
            "Office31": "gpt3_prompts/prompts/gpt-3.5-turbo-instruct_office31.json",
            "OfficeHome": "gpt3_prompts/prompts/gpt-3.5-turbo-instruct_office_home.json",
        },
        "aliases": {},
    },
}


def git_blob(repo: Path, path: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "HEAD", path], capture_output=True, text=True).stdout
    if not out.strip():
        raise SystemExit(f"{path} is not in {repo} at HEAD")
    return out.split()[2]


def describe(repo: Path, path: str) -> dict:
    entry = {"path": path, "git_blob": git_blob(repo, path)}
    file = repo / path
    if file.is_file() and file.stat().st_size > 0:
        data = json.loads(file.read_text())
        entry.update(
            sha256=hashlib.sha256(file.read_bytes()).hexdigest(),
            classes=len(data),
            sentences=sum(len(v) for v in data.values()),
        )
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=Path, required=True)
    args = parser.parse_args(argv)
    manifest = json.loads(TARGET.read_text()) if TARGET.is_file() else {}
    sources = manifest.setdefault("sources", {})
    for name, spec in SOURCES.items():
        repo = args.refs / spec["folder"]
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        if not head.startswith(spec["commit"]):
            raise SystemExit(f"{repo} is at {head.strip() or '?'}, expected {spec['repository']} at {spec['commit']}")
        sources[name] = {
            **{k: spec[k] for k in ("repository", "commit", "licence", "about", "aliases")},
            "files": {ds: describe(repo, path) for ds, path in spec["files"].items()},
        }
    TARGET.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
