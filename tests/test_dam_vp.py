"""DAM-VP against its official code (tests/reference/fixtures/dam_vp.pt, tests/reference/regenerate_dam_vp.py): the
padding prompter, the clustering and its prototypes, the routing of each image to its cluster's prompt, Reptile's
outer step. Then the method on the pocket miniature: the meta stage (Reptile over the source tasks in the image
loop), a run starting from it with one prompt per cluster, and its state surviving a reload.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import prepare_run_inputs
from vlprompt.cli import main as cli
from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config
from vlprompt.methods.dam_vp import PadPrompter, cluster_prototypes, nearest_prototype, reptile_update

FIXTURE = Path(__file__).resolve().parent / "reference" / "fixtures" / "dam_vp.pt"


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=False)


def representation(images, weight):  # the fixture's stand-in for the zero-shot logits
    return 150 * images.mean(dim=(2, 3)) @ weight


def test_the_padding_prompter_is_the_references(ref):
    mine = PadPrompter(32, ref["pad"], torch.Generator().manual_seed(0))
    for name, value in ref["pad_params"].items():
        torch.testing.assert_close(mine.state_dict()[name], value, rtol=1e-5, atol=0)
    torch.testing.assert_close(mine(ref["images"]), ref["pad_prompted"], rtol=1e-5, atol=1e-6)
    frame = mine.frame()[0]
    assert frame[:, 4:28, 4:28].abs().max() == 0 and frame[:, :4].abs().min() > 0  # zero inside, the frame outside


def test_the_clusters_and_the_routing_are_the_references(ref):
    reps = representation(ref["images"], ref["weight"])
    labels, protos = cluster_prototypes(reps, 16.0)  # DTD's threshold in adapter_clip.py
    torch.testing.assert_close(protos, ref["prototypes"], rtol=1e-5, atol=1e-5)
    assert len(protos) > 2  # the fixture has several clusters
    frames = []
    for params in ref["cluster_params"]:
        p = PadPrompter(32, ref["pad"])
        p.load_state_dict(params)
        frames.append(p.frame())
    route = nearest_prototype(reps, protos)
    routed = ref["images"] + torch.cat(frames)[route]
    torch.testing.assert_close(routed, ref["routed"], rtol=1e-5, atol=1e-6)
    assert len(set(route.tolist())) > 1


def test_reptiles_outer_step_is_the_references(ref):
    after = reptile_update(ref["theta"], ref["fast"], 0.5)
    for name, value in ref["theta_after"].items():
        torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-6)
    # half-way towards the fast prompts' mean
    mean = torch.stack([f["pad_up"] for f in ref["fast"]]).mean(0)
    torch.testing.assert_close(after["pad_up"], 0.5 * ref["theta"]["pad_up"] + 0.5 * mean)


# ---------------------------------------------------------------- the pocket miniature, through the CLI


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("dam_vp")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))
    cfg.update(
        experiment="dam_vp",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[1],
        seeds=[1],
        methods=["dam_vp"],
        sources=["pocket_sketch", "pocket_dark"],
        method_overrides={"dam_vp": {"epochs": 1, "source_epochs": 2, "update_step": 2, "batch_size": 8}},
    )
    cfg["pocket"]["per_class"] = {"train": 2, "val": 1, "test": 1}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for dataset in ("pocket_noisy", "pocket_sketch", "pocket_dark"):
        prepare_run_inputs(path, dataset, shots=1, test_bank=False)
    return root, path, load_config(path)


def test_the_meta_stage_and_a_clustered_run(mini, tmp_path):
    root, path, cfg = mini
    stage = grid.multitask_dir(cfg, "dam_vp", 1, 1)
    args = ["train-multitask", "--config", str(path), "--method", "dam_vp", "--shots", "1", "--seed", "1"]
    assert cli([*args, "--out", str(stage), "--quiet"]) == 0
    record = json.loads((stage / "metrics.json").read_text())
    assert len(record["train"]["loss_history"]) == 2 and record["train"]["steps_per_epoch"] == 2  # two source tasks
    meta = torch.load(stage / "model.pt", weights_only=False)["state"]
    assert set(meta) == {f"prompters.0.pad_{s}" for s in ("up", "down", "left", "right")} | {"prototypes"}
    first = PadPrompter(32, 4, torch.Generator().manual_seed(1)).state_dict()
    assert not torch.equal(meta["prompters.0.pad_up"], first["pad_up"])  # Reptile moved it
    # a run: one prompt per cluster, each starting from the meta prompt
    zero = yaml.safe_load(path.read_text())
    zero["method_overrides"]["dam_vp"]["epochs"] = 0
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(zero))
    train = ["train", "--dataset", "pocket_noisy", "--method", "dam_vp", "--shots", "1", "--seed", "1", "--quiet"]
    assert cli([*train, "--config", str(tmp_path / "zero.yaml"), "--out", str(tmp_path / "zero")]) == 0
    state = torch.load(tmp_path / "zero" / "model.pt", weights_only=False)["state"]
    clusters = state["prototypes"].shape[0]
    assert clusters >= 1 and state["prototypes"].shape[1] == 32  # zero-shot logits over the 32 base classes
    for k in range(clusters):
        torch.testing.assert_close(state[f"prompters.{k}.pad_up"], meta["prompters.0.pad_up"], atol=0, rtol=0)
    run = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert run["method_info"]["initialised_from"] == str(stage / "model.pt")
    assert run["method_info"]["clusters"] == clusters
    # trained one epoch: the prompts move; the run's state reloads into a fresh model (prompts and prototypes)
    assert cli([*train, "--config", str(path), "--out", str(tmp_path / "one")]) == 0
    trained = torch.load(tmp_path / "one" / "model.pt", weights_only=False)["state"]
    assert not torch.equal(trained["prompters.0.pad_up"], meta["prompters.0.pad_up"])
    from vlprompt.methods import get_method
    from vlprompt.training.context import method_context

    cls = get_method("dam_vp")
    ctx = method_context(cfg, "pocket_noisy", ["red circle", "blue square"], torch.device("cpu"), 1)
    model = cls(cls.make_config({}), ctx)
    model.load_trainable_state(trained)
    assert len(model.prompters) == clusters and torch.equal(model.prototypes, trained["prototypes"])
    # other classes (new classes, a transfer target): routed by the training classes' logits, as trained
    model.prototypes = torch.randn(3, 2)
    model.prompters = torch.nn.ModuleList([model.prompters[0]] * 3)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = model.routes(images)
    model.set_classes(["red circle", "blue square", "green ring"])
    assert torch.equal(model.routes(images), before) and model(images).shape == (4, 3)


def test_an_interrupted_run_resumes_to_the_same_prompts(mini, tmp_path):
    """The checkpoint restores the prompts in place: the optimiser keeps updating the clusters' prompts."""
    root, path, cfg = mini
    stage = grid.multitask_dir(cfg, "dam_vp", 1, 1)
    if not (stage / "metrics.json").exists():
        args = ["train-multitask", "--config", str(path), "--method", "dam_vp", "--shots", "1", "--seed", "1"]
        assert cli([*args, "--out", str(stage), "--quiet"]) == 0
    two = yaml.safe_load(path.read_text())
    two["method_overrides"]["dam_vp"]["epochs"] = 2
    two["train"]["checkpoint_every"] = 1
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    train = ["train", "--config", str(tmp_path / "two.yaml"), "--dataset", "pocket_noisy", "--method", "dam_vp"]
    train += ["--shots", "1", "--seed", "1", "--quiet"]
    assert cli([*train, "--out", str(tmp_path / "full")]) == 0
    with pytest.raises(KeyboardInterrupt):
        cli([*train, "--out", str(tmp_path / "killed"), "--stop-after", "1"])
    assert cli([*train, "--out", str(tmp_path / "killed")]) == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=False)["state"] for d in ("full", "killed"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
