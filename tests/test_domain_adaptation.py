"""The domain_adaptation protocol: its config checks, its grid, its runs (labelled source, unlabelled target, tested
on the target) on a pocket miniature through the CLI, a test that no target label is read, and its report table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY, prepare_run_inputs
from vlprompt.cli import main as cli
from vlprompt.experiment import grid
from vlprompt.experiment.checks import config_problems
from vlprompt.experiment.config import load_config

SOURCE, TARGET = "pocket_dark", "pocket_sketch"


def uda_config(**changes) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(
        experiment="uda",
        protocol="domain_adaptation",
        datasets=[SOURCE],
        pairs=[[SOURCE, TARGET]],
        methods=["zeroshot", "coop", "tfup"],
        unlabelled="train",
    )
    cfg.update(changes)
    return cfg


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pairs": []}, "protocol 'domain_adaptation' needs `pairs`"),
        ({"pairs": [[SOURCE, "pocket_skech"]]}, "`pairs`: unknown dataset 'pocket_skech'; did you mean"),
        ({"pairs": [[SOURCE, SOURCE]]}, "adapts a dataset to itself"),
        ({"pairs": [[SOURCE, TARGET], ["pocket_noisy", TARGET]]}, "the source 'pocket_noisy' of [pocket_noisy, "),
        ({"datasets": [SOURCE, "pocket_noisy"]}, "`datasets`: pocket_noisy is the source of no pair"),
        ({"unlabelled": "test"}, "never its test images; set `unlabelled: train`"),
        ({"methods": ["zeroshot", "vpt_deep"]}, "vpt_deep train(s) with the image encoder in the loop"),
        ({"pairs": [[SOURCE]]}, "pairs[0]"),
    ],
)
def test_config_problems_name_the_key_and_the_fix(changes, expected):
    lines = config_problems(uda_config(**changes), plan=False)
    assert len(lines) == 1 and expected in lines[0], lines


def test_adclip_under_another_protocol_is_refused_in_one_line():
    cfg = uda_config(protocol="fewshot", methods=["zeroshot", "adclip"])
    lines = config_problems(cfg, plan=False)
    assert len(lines) == 1 and "adclip adapt(s) a labelled source" in lines[0], lines


def test_a_valid_config_has_no_problem():
    assert config_problems(uda_config()) == []


# ---------------------------------------------------------------- the grid


def test_grid_one_run_per_method_pair_shots_seed_and_the_targets_unlabelled_split_only_where_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(uda_config(seeds=[1, 2], pairs=[[SOURCE, TARGET], [SOURCE, "pocket_noisy"]])))
    cfg = load_config(path)
    assert grid.runs(cfg) == []  # nothing trains on a dataset alone
    runs = grid.adaptation_runs(cfg)
    assert len(runs) == 2 * (1 + 2 + 1)  # pairs x (zeroshot once, coop per seed, tfup once)
    assert grid.all_datasets(cfg) == [SOURCE, TARGET, "pocket_noisy"]
    coop = grid.adaptation_inputs(cfg, SOURCE, TARGET, "coop", 2, 1)
    tfup = grid.adaptation_inputs(cfg, SOURCE, TARGET, "tfup", 0, 0)
    unlabelled = grid.features_dir(cfg, TARGET) / "train.npy"
    assert unlabelled in tfup and unlabelled not in coop
    assert grid.features_dir(cfg, SOURCE) / "train.npy" not in tfup  # never the source's unlabelled split
    assert grid.fewshot_path(cfg, SOURCE, 2, 1) in coop and grid.features_dir(cfg, TARGET) / "test.npy" in coop
    out = set(grid.all_outputs(cfg))
    assert {r.dir(cfg) / name for r in runs for name in grid.RUN_FILES} <= out
    assert runs[0].dir(cfg).parts[-6:] == ("adapt", SOURCE, TARGET, "zeroshot", "0shot", "seed0")


def test_other_protocols_ignore_pairs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(uda_config(protocol="fewshot", methods=["zeroshot", "coop"])))
    cfg = load_config(path)
    assert grid.adaptation_runs(cfg) == [] and len(grid.runs(cfg)) == 2


# ---------------------------------------------------------------- runs on a pocket miniature


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """pocket_dark (source: few-shot subset and banks) and pocket_sketch (target: test bank and training split),
    extracted as the DAG's jobs do; the source's training split is never extracted."""
    root = tmp_path_factory.mktemp("uda")
    cfg = uda_config(data_root=str(root / "data"), results_root=str(root / "results"))
    cfg["method_overrides"] = {"coop": {"epochs": 2}, "adclip": {"epochs": 1, "batch_size": 8}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, SOURCE, shots=2)
    for cmd in (["prepare"], ["classes"], ["extract"], ["extract", "--part", "train"]):
        assert cli([*cmd, "--config", str(path), "--dataset", TARGET, "--quiet"]) == 0
    for part in ("test", "train"):  # AD-CLIP's layer statistics: the target's test and unlabelled images
        assert cli(["layer-statistics", "--config", str(path), "--dataset", TARGET, "--part", part, "--quiet"]) == 0
    fewshot = ["--part", "fewshot", "--shots", "2", "--seed", "1"]  # the source's few-shot views
    assert cli(["layer-statistics", "--config", str(path), "--dataset", SOURCE, *fewshot, "--quiet"]) == 0
    return root, path, load_config(path)


def adapt(path, method, out, shots=2, seed=1) -> dict:
    args = ["--source", SOURCE, "--target", TARGET, "--method", method, "--shots", str(shots), "--seed", str(seed)]
    assert cli(["train-adaptation", "--config", str(path), *args, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_runs_are_tested_on_the_targets_test_split(mini, tmp_path):
    root, path, cfg = mini
    target_tests = len(json.loads((grid.features_dir(cfg, TARGET) / "test.json").read_text())["rows"])
    for method, shots in (("zeroshot", 0), ("coop", 2), ("tfup", 0), ("adclip", 2)):
        m = adapt(path, method, tmp_path / method, shots, 1 if shots else 0)
        assert m["dataset"] == f"{SOURCE}→{TARGET}" and m["train_dataset"] == SOURCE and m["target"] == TARGET
        assert m["protocol"] == "domain_adaptation" and m["all_n"] == target_tests
        assert 0 <= m["all_acc"] <= 100
        assert ("val_all_acc" in m) == (shots > 0)  # the source's validation images, for a trained run
    tfup = json.loads((tmp_path / "tfup" / "metrics.json").read_text())["method_info"]
    target_train = len(json.loads((grid.features_dir(cfg, TARGET) / "train.json").read_text())["rows"])
    assert tfup["unlabelled_images"] == target_train  # the target's whole training split


def test_zeroshot_uses_the_targets_template(mini, tmp_path):
    """The source-only baseline rebuilt for the target, as transfer evaluation does: the target's hand-crafted
    template makes its classifier, so its accuracy is the target's zero-shot accuracy."""
    from vlprompt.data.registry import get_dataset
    from vlprompt.methods import get_method
    from vlprompt.training.feature_runs import target_metrics, target_model

    root, path, cfg = mini
    cls = get_method("zeroshot")
    method, ctx = target_model(cfg, SOURCE, cls, cls.make_config({}), 0, 0, TARGET, {}, torch.device("cpu"))
    assert ctx.template == get_dataset(TARGET).template != get_dataset(SOURCE).template
    expected = target_metrics(cfg, method, ctx, SOURCE, TARGET, 0)["all_acc"]
    assert adapt(path, "zeroshot", tmp_path / "zs", 0, 0)["all_acc"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("method", "shots", "seed"),
    [("tfup", 0, 0), pytest.param("adclip", 2, 1, marks=pytest.mark.slow)],  # AD-CLIP: two minutes of training
)
def test_no_target_label_is_read(mini, tmp_path, method, shots, seed):
    """TFUP and AD-CLIP see the target's training split as features (AD-CLIP: and layer statistics) only: with the
    banks' labels replaced by a sentinel, or their rows removed altogether, the run still works and every prediction
    (and AD-CLIP's training loss, which reads the target's images) is the same."""
    root, path, cfg = mini
    sidecars = [grid.features_dir(cfg, TARGET) / "train.json"]
    if method == "adclip":
        sidecars.append(grid.layer_statistics_dir(cfg, TARGET) / "train.json")
    intact = [s.read_text() for s in sidecars]
    metas = [json.loads(text) for text in intact]
    assert all(len({r[1] for r in meta["rows"]}) > 1 for meta in metas)  # the banks do hold labels

    def predictions(out):
        m = adapt(path, method, out, shots, seed)
        return m["all_acc"], m["all_per_class"], m.get("loss_history")

    try:
        baseline = predictions(tmp_path / "intact")
        for sidecar, meta in zip(sidecars, metas, strict=True):
            sidecar.write_text(json.dumps({**meta, "rows": [[r[0], -1, "no class"] for r in meta["rows"]]}))
        assert predictions(tmp_path / "sentinel") == baseline
        for sidecar, meta in zip(sidecars, metas, strict=True):
            sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "rows"}))
        assert predictions(tmp_path / "absent") == baseline
    finally:
        for sidecar, text in zip(sidecars, intact, strict=True):
            sidecar.write_text(text)


def test_pairs_with_other_classes_stop_with_one_line(mini, tmp_path):
    from vlprompt.experiment.config import ConfigError
    from vlprompt.training.adaptation import same_classes

    root, path, cfg = mini
    classes = grid.classes_path(cfg, TARGET)
    intact = classes.read_text()
    try:
        content = json.loads(intact)
        classes.write_text(json.dumps({**content, "classnames": ["other"] + content["classnames"][1:]}))
        with pytest.raises(ConfigError, match=r"^pairs: pocket_dark and pocket_sketch do not have the same classes"):
            same_classes(cfg, SOURCE, TARGET)
    finally:
        classes.write_text(intact)


# ---------------------------------------------------------------- the report's table


def test_pair_table_lays_the_pairs_out_with_avg_last():
    from vlprompt.analysis.report.adaptation import pair_table

    rows = []
    for label, base in (("a→b", 50.0), ("b→a", 70.0)):
        for seed, delta in ((1, -1.0), (2, 1.0)):
            rows.append(dict(method="coop", dataset=label, shots=4, seed=seed, all_acc=base + delta, trained=True))
        zeroshot = dict(method="zeroshot", dataset=label, shots=4, all_acc=base - 10, trained=False)
        rows += [dict(zeroshot, seed=s) for s in (1, 2)]
    summary = pd.DataFrame(rows).assign(protocol="domain_adaptation", train_dataset="x")
    table = pair_table(summary, ["b→a", "a→b"], 4)
    assert list(table.columns) == ["Method", "b→a", "a→b", "Avg"]
    coop = table.set_index("Method").loc["coop"]
    assert coop["b→a"].startswith("70.00 ± ") and coop["Avg"].startswith("60.00 ± ")
    half = float(coop["a→b"].split("± ")[1])  # two seeds 49 and 51: t(0.975, 1) · √2 / √2
    assert math.isclose(half, 12.71, abs_tol=0.01)
    assert table.set_index("Method").loc["zeroshot", "Avg"] == "50.00"  # one run: no interval


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pocket_uda_runs_end_to_end_to_its_report(tmp_path):
    """config/pocket_uda.yaml reduced (one pair, one seed, 2 shots) through Snakemake to the report."""
    import subprocess

    from test_protocols import ENV, REPO, SNAKEMAKE

    cfg = yaml.safe_load((REPO / "config" / "pocket_uda.yaml").read_text())
    styles = cfg["datasets"][:2]
    cfg.update(datasets=styles[:1], pairs=[styles], shots=[2], seeds=[1])
    cfg["method_overrides"] = {"coop": {"epochs": 2}}
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 2}
    cfg["features"] = {**cfg["features"], "train_views": 2}
    path = tmp_path / "uda.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        SNAKEMAKE + ["-d", str(tmp_path), "--cores", "2", "--configfile", str(path)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = pd.read_csv(tmp_path / "results" / cfg["experiment"] / "summary.csv")
    assert set(df.dataset) == {f"{styles[0]}→{styles[1]}"} and set(df.method) == {"zeroshot", "coop", "tfup"}
    assert (df.protocol == "domain_adaptation").all() and df.all_acc.between(0, 100).all()
    report = (tmp_path / "reports" / cfg["experiment"] / "report.md").read_text()
    assert "## Per pair, as the UDA papers print it" in report
    header = next(line for line in report.splitlines() if line.startswith("| Method") and "Avg" in line)
    assert [cell.strip() for cell in header.split("|")[1:-1]] == ["Method", f"{styles[0]}→{styles[1]}", "Avg"], header


def test_pocket_uda_commands():
    """docs/domain_adaptation.md's block ``pocket_uda_commands``: the config check runs; the snakemake line's
    config validates as Snakemake loads it and its targets are rules (tests/test_docs.py's check of a line)."""
    from doc_commands import commands
    from test_docs import _check_line

    lines = commands("pocket_uda_commands")
    assert [line.split()[0] for line in lines] == ["python", "snakemake"]
    for line in lines:
        _check_line(line)


def test_pocket_uda_plans_adclips_layer_statistics_once_per_dataset_and_part(config_plans):
    """config/pocket_uda_adclip.yaml's dry run in a fresh clone: AD-CLIP's layer statistics are jobs of their own,
    one per style and part (every style is a target: its test images and unlabelled training split) and one per
    source's few-shot subset, never one per run."""
    from test_e2e import planned_jobs

    assert planned_jobs(config_plans, "config/pocket_uda_adclip.yaml") == {
        "prepare_dataset": "3",
        "split_classes": "3",
        "sample_fewshot": "9",  # 3 sources x 3 seeds
        "extract_test": "3",
        "extract_unlabelled": "3",
        "extract_fewshot": "9",
        "layer_statistics": "6",  # 3 targets x (test, train)
        "layer_statistics_fewshot": "9",  # 3 sources x 3 seeds
        "train_adaptation": "24",  # 6 pairs x (zeroshot 1 + adclip 3)
        "aggregate": "1",
        "report": "1",
        "all": "1",
        "total": "72",
    }


def test_the_layer_statistics_are_inputs_of_adclip_runs_only(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(uda_config(methods=["zeroshot", "coop", "tfup", "adclip"])))
    cfg = load_config(path)
    adclip = grid.adaptation_inputs(cfg, SOURCE, TARGET, "adclip", 2, 1)
    stats = grid.layer_statistics_dir(cfg, TARGET)
    assert {stats / "test.npy", stats / "train.npy"} <= set(adclip)
    assert set(grid.fewshot_layer_statistics_files(cfg, SOURCE, 2, 1)) <= set(adclip)
    assert grid.layer_statistics_dir(cfg, SOURCE) / "train.npy" not in adclip  # never the source's unlabelled split
    assert stats.parts[-3:] == (grid.backbone_key(cfg), grid.dataset_key(cfg, TARGET), "blocks_all")  # as the features
    for method in ("zeroshot", "coop", "tfup"):
        inputs = grid.adaptation_inputs(cfg, SOURCE, TARGET, method, 2 if method == "coop" else 0, 1)
        assert not [p for p in inputs if "layer_statistics" in p.parts]


def test_a_corrupt_layer_statistics_bank_is_one_line(mini):
    """A truncated or overwritten statistics file: the reader names it with the command that rebuilds it, and the
    Snakefile's integrity check finds it before a run, as for the feature bank."""
    from vlprompt.clip.features import FeatureBank
    from vlprompt.io import CorruptArtefactError
    from vlprompt.pipeline import integrity

    root, path, cfg = mini
    npy = grid.layer_statistics_dir(cfg, TARGET) / "test.npy"
    intact = npy.read_bytes()
    try:
        npy.write_bytes(intact[:-8])
        assert integrity.check([npy]) == [(npy, f"{len(intact) - 8} bytes, {len(intact)} when it was written")]
        with pytest.raises(CorruptArtefactError) as err:
            FeatureBank(npy.parent).array("test")
        assert "\n" not in str(err.value) and "rebuild it with: snakemake" in str(err.value)
        npy.write_bytes(intact[:-8] + b"\x01" * 8)  # same size, other bytes
        with pytest.raises(CorruptArtefactError, match="sha256 differs"):
            FeatureBank(npy.parent).array("test")
    finally:
        npy.write_bytes(intact)
