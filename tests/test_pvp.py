"""PVP (no official code): VPT-deep started from prompts trained on the source datasets in the image loop.

The reduction the reading asks for: without source training (``source_epochs: 0``) a PVP run is VPT-deep's run
exactly. Then the source stage in the image loop (merged classes, the sources' images), and a run starting
bit-exactly from its prompts.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import prepare_run_inputs
from vlprompt.cli import main as cli
from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config
from vlprompt.training.multitask import merged_image_rows

SMALL = {"epochs": 2, "n_ctx_vision": 2, "depth_vision": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """pocket_noisy (target) and pocket_sketch (the source), prepared as the DAG's jobs do for image methods."""
    root = tmp_path_factory.mktemp("pvp")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))
    cfg.update(
        experiment="pvp",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[1],
        seeds=[1],
        methods=["vpt_deep", "pvp"],
        sources=["pocket_sketch"],
        method_overrides={"vpt_deep": SMALL, "pvp": {**SMALL, "source_epochs": 2}},
    )
    cfg["pocket"]["per_class"] = {"train": 2, "val": 1, "test": 1}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for dataset in ("pocket_noisy", "pocket_sketch"):
        prepare_run_inputs(path, dataset, shots=1, test_bank=False)
    return root, path, load_config(path)


def with_pvp(path, out_path, **settings):
    cfg = yaml.safe_load(path.read_text())
    cfg["method_overrides"]["pvp"] = {**cfg["method_overrides"]["pvp"], **settings}
    out_path.write_text(yaml.safe_dump(cfg))
    return out_path


def source_stage(path, cfg):
    stage = grid.multitask_dir(cfg, "pvp", 1, 1)
    args = ["train-multitask", "--config", str(path), "--method", "pvp", "--shots", "1", "--seed", "1"]
    assert cli([*args, "--out", str(stage), "--quiet"]) == 0
    return stage


def train(path, method, out):
    args = ["train", "--config", str(path), "--dataset", "pocket_noisy", "--method", method]
    return cli([*args, "--shots", "1", "--seed", "1", "--out", str(out), "--quiet"])


def test_the_run_and_the_source_stage_read_images(mini):
    root, path, cfg = mini
    stage = grid.multitask_dir(cfg, "pvp", 1, 1)
    assert {p.name for p in grid.train_inputs(cfg, "pocket_noisy", "pvp", 1, 1)} >= {"metrics.json", "model.pt"}
    assert all(p.parent == stage for p in grid.train_inputs(cfg, "pocket_noisy", "pvp", 1, 1) if p.name == "model.pt")
    inputs = grid.multitask_inputs(cfg, "pvp", 1, 1)
    assert grid.split_file(cfg, "pocket_sketch") in inputs and not any("features" in str(p) for p in inputs)
    base, rows, names = merged_image_rows(cfg, ["pocket_sketch"], 1, 1)
    assert len(names) == 32 and len(rows) == 32  # the source's base classes, one shot each
    assert all((base / r[0]).is_file() for r in rows) and {r[1] for r in rows} == set(range(32))


def test_pvp_without_source_training_is_vpt_deep(mini, tmp_path):
    root, path, cfg = mini
    none = with_pvp(path, tmp_path / "none.yaml", source_epochs=0)
    source_stage(none, load_config(none))
    assert train(none, "pvp", tmp_path / "pvp") == 0
    assert train(path, "vpt_deep", tmp_path / "vpt") == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=False)["state"] for d in ("pvp", "vpt"))
    assert a.keys() == b.keys() == {"vision_ctx"}
    torch.testing.assert_close(a["vision_ctx"], b["vision_ctx"], atol=0, rtol=0)
    mp, mv = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("pvp", "vpt"))
    for key in [k for k in mv if k.endswith(("_acc", "_per_class", "hm"))]:
        assert mp[key] == mv[key], key
    assert mp["train"]["loss_history"] == mv["train"]["loss_history"]


def test_pvp_starts_from_the_source_stage(mini, tmp_path):
    root, path, cfg = mini
    stage = source_stage(path, cfg)
    record = json.loads((stage / "metrics.json").read_text())
    assert record["sources"] == ["pocket_sketch"] and record["classes"] == 32 and record["images"] == 32
    assert len(record["train"]["loss_history"]) == 2
    prompts = torch.load(stage / "model.pt", weights_only=False)["state"]["vision_ctx"]
    zero = with_pvp(path, tmp_path / "zero.yaml", epochs=0)
    assert train(zero, "pvp", tmp_path / "zero") == 0
    saved = torch.load(tmp_path / "zero" / "model.pt", weights_only=False)["state"]["vision_ctx"]
    torch.testing.assert_close(saved, prompts, atol=0, rtol=0)
    run = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert run["method_info"]["initialised_from"] == str(stage / "model.pt")
    # trained from there: not VPT-deep's random start
    assert train(path, "pvp", tmp_path / "two") == 0
    assert train(path, "vpt_deep", tmp_path / "vpt") == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=False)["state"]["vision_ctx"] for d in ("two", "vpt"))
    assert not torch.equal(a, b)
