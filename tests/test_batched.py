"""Runs trained together (vlprompt.training.batched) equal runs trained alone, and a killed batched job resumes.

Tolerance: a run's text features and gradients in the shared tower pass differ from its single-run values only
in the order of floating-point sums inside the matrix products (a batch of 2 x C prompt rows instead of C may
take another kernel blocking), so losses and parameters agree to rtol 1e-5 and accuracies (argmaxes) are equal.
"""

import json

import pytest
import torch
import yaml

from conftest import prepare_run_inputs
from vlprompt.experiment.config import load_config
from vlprompt.methods import get_method
from vlprompt.training import batched, feature_runs, runs

METHODS = ["coop", "coop_csc", "kgcoop", "prograd", "cocoop"]
SEEDS = (1, 2)
RTOL = 1e-5


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="batched",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=list(SEEDS),
        methods=METHODS,
        method_overrides={
            "coop": {"epochs": 4, "batch_size": 8},
            "coop_csc": {"epochs": 3, "batch_size": 8},
            "kgcoop": {"epochs": 3, "batch_size": 8},
            "prograd": {"epochs": 3, "batch_size": 8, "n_ctx": 8},
            "cocoop": {"epochs": 2, "batch_size": 4, "meta_reduction": 2},
        },
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 1}
    cfg["features"]["train_views"] = 2
    cfg["train"]["checkpoint_every"] = 2
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for seed in SEEDS:
        prepare_run_inputs(path, "pocket_noisy", shots=2, seed=seed, test_bank=seed == SEEDS[0])
    return root, load_config(path)


def read(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    state = torch.load(folder / "model.pt", weights_only=False)["state"]
    return metrics, state


def assert_same_run(a: tuple, b: tuple, rtol: float = RTOL) -> None:
    (ma, sa), (mb, sb) = a, b
    losses_a, losses_b = ma["train"].pop("loss_history"), mb["train"].pop("loss_history")
    assert losses_a == pytest.approx(losses_b, rel=rtol)
    for m in (ma, mb):
        for key in ("seconds", "provenance", "artefacts"):
            m.pop(key)
    assert ma == mb  # accuracies (every per-class one), hyperparameters, steps: equal
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=1e-7)


@pytest.mark.parametrize(
    "method",
    # CoCoOp evaluates every test image against every class's instance-conditioned prompt: tens of seconds
    [pytest.param(m, marks=pytest.mark.slow) if m == "cocoop" else m for m in METHODS],
)
def test_batched_runs_equal_single_runs(mini, method):
    root, cfg = mini
    assert batched.can_batch(get_method(method))
    group = [(2, seed, root / "together" / method / str(seed)) for seed in SEEDS]
    batched.run_group(cfg, "pocket_noisy", method, group)
    for _, seed, folder in group:
        alone = root / "alone" / method / str(seed)
        feature_runs.run(cfg, "pocket_noisy", method, 2, seed, alone, progress=False)
        assert_same_run(read(alone), read(folder))


def test_killed_batched_job_resumes_to_the_same_result(mini):
    root, cfg = mini
    full = [(2, seed, root / "full" / str(seed)) for seed in SEEDS]
    batched.run_group(cfg, "pocket_noisy", "coop", full)
    killed = [(2, seed, root / "killed" / str(seed)) for seed in SEEDS]
    with pytest.raises(KeyboardInterrupt):
        batched.run_group(cfg, "pocket_noisy", "coop", killed, stop_after=2)
    for _, _, folder in killed:
        assert (folder / "checkpoint.pt").exists() and not (folder / "metrics.json").exists()
    # one run's checkpoint lost: it starts over while the other resumes, in the same lockstep
    (killed[1][2] / "checkpoint.pt").unlink()
    batched.run_group(cfg, "pocket_noisy", "coop", killed)
    for (_, _, a), (_, _, b) in zip(full, killed, strict=True):
        assert not (b / "checkpoint.pt").exists()
        assert_same_run(read(a), read(b), rtol=0)  # the same computation: bit for bit


def test_batchable_is_declared_not_inherited():
    assert batched.can_batch(get_method("coop")) and batched.can_batch(get_method("kgcoop"))
    assert not batched.can_batch(get_method("tpt"))  # a CoOp subclass that draws test-time augmentations
    assert batched.can_batch(get_method("vpt_deep"))  # image encoder in the loop (vlprompt.training.batched_images)
    assert not batched.can_batch(get_method("ivlp"))  # VPT-deep's subclass, text prompts too: not declared
    assert not batched.can_batch(get_method("linear_probe"))


def test_run_many_batches_only_when_the_config_says(mini, monkeypatch):
    root, cfg = mini
    calls = []
    monkeypatch.setattr(batched, "run_group", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(runs, "run", lambda *a, **k: calls.append("alone"))
    cfg = {**cfg, "results_root": str(root / "many"), "train": {**cfg["train"], "batch_seeds": True}}
    runs.run_many(cfg, "pocket_noisy", "coop", [(2, s) for s in SEEDS])
    assert len(calls) == 1 and calls[0][2] == "coop" and [r[1] for r in calls[0][3]] == list(SEEDS)
    calls.clear()
    runs.run_many({**cfg, "train": {**cfg["train"], "batch_seeds": False}}, "pocket_noisy", "coop", [(2, 1), (2, 2)])
    assert calls == ["alone", "alone"]
    calls.clear()
    runs.run_many(cfg, "pocket_noisy", "linear_probe", [(2, 1), (2, 2)])  # not batchable
    assert calls == ["alone", "alone"]


@pytest.mark.slow
def test_default_experiment_runs_match_the_committed_example(tmp_path):
    """The default experiment's runs of the batchable methods on one dataset, trained together as its jobs train
    them, give the committed example report's cells (reports/examples/pocket/cells.csv: means over the three
    seeds, written to 4 decimals)."""
    import csv

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(data_root=str(tmp_path / "data"), results_root=str(tmp_path / "results"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dataset, methods = "pocket_dark", ["coop", "kgcoop"]
    for seed in cfg["seeds"]:
        prepare_run_inputs(path, dataset, shots=16, seed=seed, test_bank=seed == cfg["seeds"][0])
    cfg = load_config(path)
    assert cfg["train"]["batch_seeds"]
    with open("reports/examples/pocket/cells.csv") as f:
        cells = {(r["method"], r["dataset"]): r for r in csv.DictReader(f)}
    for method in methods:
        metrics = runs.run_many(cfg, dataset, method, [(16, s) for s in cfg["seeds"]], progress=False)
        assert len(metrics) == len(cfg["seeds"])
        for key in ("base_acc", "new_acc", "hm"):
            mean = sum(m[key] for m in metrics) / len(metrics)
            assert mean == pytest.approx(float(cells[(method, dataset)][f"{key}_mean"]), abs=1e-3), (method, key)
