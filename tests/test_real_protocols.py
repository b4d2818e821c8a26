"""The four paper protocols on the real benchmarks, without data or weights.

- Each real config dry-runs (``snakemake -n``) here, with no dataset and no CLIP weights, and its DAG has
  exactly the jobs the protocol implies (counted by hand below from the papers' grids).
- Domain generalisation on ImageNet-A / -R: the ImageNet model is evaluated on the 200-class subset with a
  classifier over those 200 classes only, i.e. its 1000-way logits restricted to the subset's columns.
"""

import re
from pathlib import Path

import pytest
import torch

from vlprompt.clip.prompting import PromptedTextEncoder
from vlprompt.data import real, registry, splits
from vlprompt.experiment.config import load_config
from vlprompt.methods import get_method
from vlprompt.methods.base import MethodContext, normalize
from vlprompt.training.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
COOP_11 = [
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "Flowers102",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
]
DG_TARGETS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]

# Jobs per rule, from each protocol's grid. A trained method has one run per dataset x shots x seed; a
# zero-shot method one per dataset (shots 0, seed 0). Feature-bank methods train in `train`, image-encoder
# methods (vpt_deep, ivlp, maple, promptsrc, hicropl, coprompt, disa, clip_lora, glad, apt, tcpa, prompt_cam, dpl) in
# `train_images`; every run is evaluated on every target.
EXPECTED = {
    # 11 datasets; zeroshot + 6 feature methods (coop, cocoop, kgcoop, prograd, dvmi, tmml) + 12 image methods;
    # 16 shots; seeds 1-3
    # (few-shot subsets and their features: one job per dataset x shots x seed; test features per dataset)
    "base2novel.yaml": {
        "prepare_dataset": 11,
        "split_classes": 11,
        "sample_fewshot": 11 * 3,
        "extract_test": 11,
        "extract_fewshot": 11 * 3,
        "train": 11 + 11 * 6 * 1 * 3,
        "train_images": 11 * 12 * 1 * 3,  # with hicropl, coprompt, disa, clip_lora, glad, apt, tcpa, dpl
        "aggregate": 1,
        "report": 1,
        "all": 1,
    },
    # 11 datasets; zeroshot + 8 feature methods (with tmml) + 9 image methods (clip_lora, glad, prompt_cam, apt, tcpa,
    # dpl, hicropl, coprompt, disa); shots 1, 2, 4, 8, 16; seeds 1-3
    "fewshot.yaml": {
        "prepare_dataset": 11,
        "split_classes": 11,
        "sample_fewshot": 11 * 5 * 3,
        "extract_test": 11,
        "extract_fewshot": 11 * 5 * 3,
        "train": 11 + 11 * 8 * 5 * 3,
        "train_images": 11 * 9 * 5 * 3,
        "aggregate": 1,
        "report": 1,
        "all": 1,
    },
    # ImageNet + 10 targets prepared and their test features extracted (ImageNet's few-shot subsets too);
    # zeroshot + 5 feature methods (coop, cocoop, kgcoop, dvmi, tmml) + 10 image methods (maple, promptsrc, hicropl,
    # coprompt, disa, clip_lora, glad, apt, tcpa, dpl)
    # trained on ImageNet (16 shots, seeds 1-3); each run evaluated on the 10 targets
    "crossdataset.yaml": {
        "prepare_dataset": 11,
        "split_classes": 11,
        "sample_fewshot": 3,
        "extract_test": 11,
        "extract_fewshot": 3,
        "train": 1 + 5 * 3,
        "train_images": 10 * 3,
        "evaluate_transfer": (1 + 5 * 3) * 10,
        "evaluate_transfer_images": 10 * 3 * 10,
        "aggregate": 1,
        "report": 1,
        "all": 1,
    },
    # the same models evaluated on the 4 ImageNet variants
    "domain_generalization.yaml": {
        "prepare_dataset": 5,
        "split_classes": 5,
        "sample_fewshot": 3,
        "extract_test": 5,
        "extract_fewshot": 3,
        "train": 1 + 5 * 3,
        "train_images": 10 * 3,
        "evaluate_transfer": (1 + 5 * 3) * 4,
        "evaluate_transfer_images": 10 * 3 * 4,
        "aggregate": 1,
        "report": 1,
        "all": 1,
    },
}


def dry_run_jobs(text: str) -> dict[str, int]:
    """Jobs per rule of a dry run's job-stats table (``text``: its stdout and stderr)."""
    body = text[text.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", body, re.M) if m.group(1) != "total"}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_protocol_config_has_the_protocols_grid(name):
    cfg = load_config(REPO / "config" / name)
    assert cfg["backbone"] == {"model": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}
    assert cfg["shots"] == ([1, 2, 4, 8, 16] if name == "fewshot.yaml" else [16]) and cfg["seeds"] == [1, 2, 3]
    assert cfg["train"]["job_granularity"] == "run"
    if cfg["protocol"] in ("base2new", "fewshot"):
        assert cfg["datasets"] == COOP_11
    else:
        assert cfg["datasets"] == ["ImageNet"]
        assert cfg["targets"] == (COOP_11[1:] if cfg["protocol"] == "crossdataset" else DG_TARGETS)


@pytest.mark.slow  # a dry run of the full-size grid (fewshot.yaml: 1000+ jobs): the full suite, not the fast tier
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_protocol_dry_run_has_the_protocols_jobs(config_plans, name):
    cfg = load_config(REPO / "config" / name)
    # `snakemake -n` in a fresh clone (conftest's config_plans, shared with test_isolation's checks of every config;
    # the four in one process, whichever case comes first)
    config_plans.prefetch([(f"config/{protocol}", True) for protocol in EXPECTED])
    plan = config_plans(f"config/{name}")
    assert plan.returncode == 0, plan.output[-4000:]
    assert dry_run_jobs(plan.output) == EXPECTED[name]
    # the DAG resolved its config into the experiment's folder, and wrote nothing else outside it (but
    # Snakemake's own .snakemake/)
    assert plan.resolved is not None
    outside = [
        p for p in plan.written if not p.startswith((f"{cfg['results_root']}/{cfg['experiment']}/", ".snakemake/"))
    ]
    assert outside == [], outside
    assert not (config_plans.clone / cfg["data_root"]).exists()  # a dry run needs no data and fetches none


# ---- domain generalisation: ImageNet-A / -R are evaluated on their own 200 classes ----------------------


def subset_split(tmp_path: Path, name: str) -> tuple[dict, dict]:
    """The split and classes.json the DAG writes for ImageNet-A / -R: prepare reads the 200 WordNet-id
    folders (one image each here), split writes the class file."""
    wnids = real.imagenet_classes()["imagenet_a_wnids" if name == "ImageNetA" else "imagenet_r_wnids"]
    image_dir = tmp_path / real.info(name)["image_dir"]
    for w in reversed(wnids):  # folder creation order must not matter
        (image_dir / w).mkdir(parents=True)
        (image_dir / w / f"{w}_0.jpg").write_bytes(b"jpeg")
    split = real._wnid_split(tmp_path, name)
    return split, splits.write_classes(tmp_path / "classes.json", split)


@pytest.mark.parametrize("name", ["ImageNetA", "ImageNetR"])
def test_imagenet_subset_labels_are_imagenet_classes(tmp_path, name):
    ic = real.imagenet_classes()
    wnids = ic["imagenet_a_wnids" if name == "ImageNetA" else "imagenet_r_wnids"]
    split, classes = subset_split(tmp_path, name)
    name_of = dict(zip(ic["wnids"], ic["classnames"], strict=True))
    assert len(classes["classnames"]) == registry.get_dataset(name).n_classes == 200
    assert classes["classnames"] == [name_of[w] for w in wnids]  # label i = the i-th wnid of the subset
    for rel, label, cname in split["test"]:
        assert rel.split("/")[-2] == wnids[label] and cname == name_of[wnids[label]]


@pytest.mark.parametrize("method", ["zeroshot", "linear_probe"])
@pytest.mark.parametrize("name", ["ImageNetA", "ImageNetR"])
def test_imagenet_model_on_a_200_class_subset_uses_only_those_classes(tmp_path, pocket_random_backbone, name, method):
    """The ImageNet model's predictions on ImageNet-A/-R are the argmax of its 1000-way logits over the
    subset's 200 columns. Zero-shot re-encodes the 200 names (``set_classes``); the linear probe selects
    its rows. Each test image lies between its own class and a class outside the subset that wins the
    1000-way argmax, so an evaluation over all 1000 classes would score far lower (the test can fail)."""
    ic = real.imagenet_classes()
    split, classes = subset_split(tmp_path, name)
    backbone = pocket_random_backbone
    ctx = MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=ic["classnames"],
        template=registry.get_dataset("ImageNet").template,
        device=torch.device("cpu"),
    )
    cls = get_method(method)
    model = cls(cls.make_config(None), ctx).eval()
    if method == "linear_probe":  # a trained probe: one random unit row per ImageNet class
        with torch.no_grad():
            model.weight.copy_(
                normalize(torch.randn(1000, backbone.embed_dim, generator=torch.Generator().manual_seed(1)))
            )
        directions = model.weight.detach()
    else:
        directions = model.weights  # the 1000 classes' normalised text features
    subset = ic["imagenet_a_wnids"] if name == "ImageNetA" else ic["imagenet_r_wnids"]
    columns = torch.tensor([ic["wnids"].index(w) for w in subset])  # subset label -> ImageNet label
    outside = torch.tensor(sorted(set(range(1000)) - set(columns.tolist())))
    rows = split["test"]
    labels = torch.tensor([r[1] for r in rows])
    decoys = outside[torch.randperm(len(outside), generator=torch.Generator().manual_seed(0))[: len(rows)]]
    feats = directions[columns[labels]] + 1.05 * directions[decoys]
    with torch.no_grad():
        full = model(feats)  # (200, 1000)
    restricted = full[:, columns].argmax(-1)
    correct = (restricted == labels).float()
    out = evaluate(model, rows, feats, classes, "domain_generalization", ic["classnames"], torch.device("cpu"))
    assert out["all_n"] == 200
    assert out["all_acc"] == pytest.approx(float(correct.mean() * 100))
    assert out["all_per_class"] == [float(correct[labels == c].mean() * 100) for c in range(200)]
    over_1000 = (full.argmax(-1) == columns[labels]).float().mean().item() * 100
    assert out["all_acc"] >= 20 and over_1000 <= out["all_acc"] / 4, (out["all_acc"], over_1000)
