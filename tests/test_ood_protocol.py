"""Protocol ood: the grid and the config checks, the OpenOOD sets as registered datasets, the ImageNet config's
dry run, and (slow) the whole DAG on a tiny pocket world up to the report's OpenOOD table."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, TEST_ENV, tiny_config
from test_real_protocols import dry_run_jobs
from vlprompt.data import real, registry
from vlprompt.experiment import grid
from vlprompt.experiment.checks import config_problems
from vlprompt.experiment.config import load_config


def ood_cfg(**ood) -> dict:
    cfg = load_config(REPO / "config" / "pocket_ood.yaml")
    cfg["ood"] = {**cfg["ood"], **ood}
    return cfg


def test_grid_has_one_job_per_run_and_set():
    cfg = load_config(REPO / "config" / "pocket_ood.yaml")
    sets = grid.ood_sets(cfg)
    assert [(s.name, s.group) for s in sets] == [
        ("pocket_cluttered.new", "near"),
        ("pocket_sketch.new", "far"),
        ("pocket_pixelated.new", "far"),
    ]
    assert grid.all_datasets(cfg) == ["pocket_cluttered", "pocket_sketch", "pocket_pixelated"]
    paths = grid.ood_paths(cfg)
    assert len(paths) == len(grid.runs(cfg)) * 3 and len(set(paths)) == len(paths)
    assert str(paths[0]).endswith("/ood/pocket_cluttered.new.json")
    assert set(paths) <= set(grid.all_outputs(cfg))
    inputs = grid.ood_inputs(cfg, "pocket_sketch.new", "coop", "pocket_cluttered", 16)
    assert grid.features_dir(cfg, "pocket_sketch") / "test.npy" in inputs
    assert grid.features_dir(cfg, "pocket_cluttered") / "test.npy" in inputs
    # another protocol has no OOD set, whatever its `ood` block says
    assert grid.ood_sets({**cfg, "protocol": "fewshot"}) == []


def test_ood_classes_are_the_base_half_and_id_accuracy_is_on_them():
    from vlprompt.training.context import training_classes

    classes = {"classnames": list("abcd"), "base": [0, 1], "new": [2, 3]}
    assert training_classes(ood_cfg(id_classes="base"), classes) == [0, 1]
    assert training_classes(ood_cfg(id_classes="all"), classes) == [0, 1, 2, 3]


def test_config_checks_name_each_problem():
    cfg = load_config(REPO / "config" / "pocket_ood.yaml")
    assert config_problems(cfg, plan=False) == []
    cases = {
        "needs OOD sets": {"ood": {"id_classes": "base", "near": [], "far": []}},
        "holds in-distribution classes": {"ood": {"id_classes": "all", "near": [{"dataset": "pocket_cluttered"}]}},
        "unknown dataset": {"ood": {"near": [{"dataset": "pocket_drak", "classes": "new"}]}},
        "more than once": {"ood": {"far": [{"dataset": "pocket_noisy"}, {"dataset": "pocket_noisy"}]}},
        "image encoder in the loop": {"methods": ["zeroshot", "vpt_deep"]},
    }
    for expected, change in cases.items():
        bad = {k: v for k, v in yaml.safe_load((REPO / "config" / "pocket_ood.yaml").read_text()).items()}
        bad.update(change)
        lines = config_problems(bad, plan=False)
        assert any(expected in line for line in lines), (expected, lines)
        assert all("\n" not in line for line in lines)


def test_openood_sets_are_registered_and_split_as_one_test_class(tmp_path):
    for name in ("SSBHard", "NINCO", "iNaturalistOOD", "OpenImageO"):
        spec = registry.get_dataset(name)
        assert spec.kind == "real" and spec.n_classes == 1 and "{}" in spec.template
        assert spec.info["split"]["kind"] == "ood_images" and all(f["manual"] for f in spec.info["files"])
    folder = tmp_path / "ninco"
    (folder / "class_a").mkdir(parents=True)
    for rel in ("class_a/1.jpg", "class_a/2.JPEG", "3.png", "class_a/.hidden.jpg", "notes.txt"):
        (folder / rel).write_bytes(b"x")
    split = real._ood_images_split(tmp_path, "NINCO")
    assert split["train"] == [] and split["val"] == []
    assert split["test"] == [["ninco/3.png", 0, "ood image"], ["ninco/class_a/1.jpg", 0, "ood image"],
                             ["ninco/class_a/2.JPEG", 0, "ood image"]]  # fmt: skip
    with pytest.raises(real.RealDatasetError, match="no image below"):
        real._ood_images_split(tmp_path / "empty", "NINCO")


def test_imagenet_config_plans_every_run_on_every_openood_set(config_plans):
    cfg = load_config(REPO / "config" / "ood_imagenet.yaml")
    assert cfg["protocol"] == "ood" and cfg["datasets"] == ["ImageNet"]
    assert [s.name for s in grid.ood_sets(cfg)] == ["SSBHard", "NINCO", "iNaturalistOOD", "DTD", "OpenImageO"]
    plan = config_plans("config/ood_imagenet.yaml")
    assert plan.returncode == 0, plan.output[-4000:]
    runs = 3 + 3  # zeroshot, mcm, neglabel once; coop x 3 seeds
    jobs = dry_run_jobs(plan.output)
    assert jobs["evaluate_ood"] == runs * 5 and jobs["prepare_dataset"] == 6 and jobs["train"] == runs
    assert not (config_plans.clone / cfg["data_root"]).exists()


@pytest.mark.slow
def test_tiny_ood_experiment_runs_to_the_openood_table(tmp_path):
    """The whole DAG on a tiny v1 pocket world: ID = pocket_dark's base half, near = its new half, far = the new
    half in the sketch style; zero-shot (MSP), NegLabel and a short CoOp, to the report's OpenOOD table."""
    cfg = tiny_config(
        experiment="tiny_ood",
        protocol="ood",
        ood={
            "id_classes": "base",
            "near": [{"dataset": "pocket_dark", "classes": "new"}],
            "far": [{"dataset": "pocket_sketch", "classes": "new"}],
        },
        methods=["zeroshot", "neglabel", "coop"],
        stats={"bootstrap_resamples": 200, "metrics": ["auroc"], "reference_methods": ["zeroshot"]},
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", REPO / "Snakefile", "-d", tmp_path, "--cores", "2", "--quiet"]
        + ["--configfile", tmp_path / "config.yaml"],
        env=TEST_ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "tiny_ood" / "summary.csv")
    ood = summary[summary.ood_group.notna()]
    assert set(ood.dataset) == {"pocket_dark.new", "pocket_sketch.new"}
    assert ood.auroc.between(0, 100).all() and ood.fpr95.between(0, 100).all()
    one = json.loads(
        (tmp_path / "results/tiny_ood/runs/pocket_dark/neglabel/0shot/seed0/ood/pocket_dark.new.json").read_text()
    )
    assert one["score"] == "ood_score" and one["n_id"] > 0 and one["n_ood"] > 0 and one["ood_group"] == "near"
    msp = json.loads(
        (tmp_path / "results/tiny_ood/runs/pocket_dark/zeroshot/0shot/seed0/ood/pocket_dark.new.json").read_text()
    )
    assert msp["score"] == "msp" and msp["all_acc"] == one["all_acc"]  # NegLabel classifies as zero-shot CLIP
    report = (tmp_path / "reports" / "tiny_ood" / "report.md").read_text()
    assert "OOD detection (OpenOOD layout)" in report and "near average AUROC" in report
    stats = pd.read_csv(tmp_path / "results" / "tiny_ood" / "stats.csv")
    assert (stats.metric.dropna() == "auroc").all()
