"""Hyperparameter overrides per dataset and per shots, resolved in one place
(config.method_settings) and read by training, the run's hash, its record and the report."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

import vlprompt.experiment.config as config
from conftest import prepare_run_inputs
from vlprompt.experiment.config import ConfigError, method_config_hash, validate

SCOPED = {
    "coop": {
        "epochs": 200,
        "lr": 0.1,
        "by_shots": {1: {"epochs": 50, "lr": 0.3}, 2: {"epochs": 100}},
        "by_dataset": {"ImageNet": {"epochs": 60, "by_shots": {1: {"epochs": 70}}}, "DTD": {"n_ctx": 8}},
    }
}


def real(**overrides):
    cfg = yaml.safe_load(open("config/base2novel.yaml"))
    cfg.update({"shots": [1, 2, 16], "method_overrides": copy.deepcopy(SCOPED), **overrides})
    return cfg


@pytest.mark.parametrize("roundtrip", [False, True])
def test_precedence_more_specific_wins(roundtrip):
    """preset < method < by_shots < by_dataset < by_dataset.by_shots; JSON (the jobs' config) gives string keys."""
    cfg = json.loads(json.dumps(real())) if roundtrip else real()
    s = lambda d, k: config.method_settings(cfg, "coop", d, k)  # noqa: E731
    assert s("Caltech101", 16) == {"epochs": 200, "lr": 0.1}
    assert s("Caltech101", 1) == {"epochs": 50, "lr": 0.3}
    assert s("ImageNet", 2) == {"epochs": 60, "lr": 0.1}  # the dataset's setting beats the shots setting
    assert s("ImageNet", 1) == {"epochs": 70, "lr": 0.3}  # the dataset's shots setting beats both
    assert s("DTD", 2) == {"epochs": 100, "lr": 0.1, "n_ctx": 8}
    assert config.method_settings(cfg, "kgcoop", "DTD", 1) == {}
    assert config.method_settings(cfg, "coop") == {"epochs": 200, "lr": 0.1}


def test_scoped_overrides_validate_and_errors_name_the_place():
    assert validate(real())["method_overrides"]["coop"]["by_dataset"]["ImageNet"]["epochs"] == 60
    cases = [
        (
            {"coop": {"by_dataset": {"Imagenet": {"epochs": 5}}}},
            r"method_overrides\.coop\.by_dataset: unknown "
            r"dataset 'Imagenet'; available",
        ),
        (
            {"coop": {"by_shots": {1: {"epoch": 5}}}},
            r"method_overrides\.coop\.by_shots\.1: unknown "
            r"hyperparameter.*'epoch'",
        ),
        (
            {"coop": {"by_dataset": {"DTD": {"by_shots": {4: {"lr": "fast"}}}}}},
            r"method_overrides\.coop\.by_dataset\.DTD\.by_shots\.4: .*'lr' must be of type float",
        ),
        ({"coopp": {"epochs": 5}}, r"method_overrides\.coopp: unknown method 'coopp'"),
        ({"coop": {"by_shots": {"one": {"epochs": 5}}}}, r"by_shots"),
        ({"coop": {"by_shots": {0: {"epochs": 5}}}}, r"by_shots keys are numbers of shots"),
        ({"coop": {"by_dataset": {"DTD": {"by_dataset": {"DTD": {}}}}}}, r"by_dataset"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate(real(method_overrides=overrides))


def test_hash_changes_only_for_the_runs_whose_settings_change():
    cfg = validate(real(datasets=["ImageNet", "DTD"]))
    before = {(d, k): method_config_hash(cfg, "coop", d, k) for d in ("ImageNet", "DTD") for k in (1, 2, 16)}
    cfg["method_overrides"]["coop"]["by_dataset"]["ImageNet"]["epochs"] = 55
    after = {key: method_config_hash(cfg, "coop", *key) for key in before}
    assert [key for key in before if before[key] != after[key]] == [("ImageNet", 2), ("ImageNet", 16)]
    cfg["method_overrides"]["coop"]["by_shots"][2]["epochs"] = 90
    again = {key: method_config_hash(cfg, "coop", *key) for key in before}
    assert [key for key in before if again[key] != after[key]] == [("DTD", 2)]  # ImageNet's own value wins
    assert method_config_hash(cfg, "coop", "DTD") != method_config_hash(cfg, "coop", "ImageNet")  # a whole job


def test_report_provenance_lists_the_overrides_in_force(tmp_path):
    import pandas as pd

    from vlprompt.analysis.report import render
    from vlprompt.analysis.stats import compute_stats

    fast = {"bootstrap_resamples": 200, "bayesian_samples": 1000}
    rows = [
        {
            "method": m,
            "protocol": "fewshot",
            "dataset": d,
            "train_dataset": d,
            "shots": k,
            "seed": s,
            "base_acc": None,
            "new_acc": None,
            "hm": None,
            "all_acc": 50 + gain + k + s / 10 + i,
            "backbone": "PocketCLIP-ViT-T8",
            "weights_sha256": "abc",
            "config_hash": "h",
            "trained": True,
        }
        for gain, m in enumerate(["coop", "tip_adapter"])
        for i, d in enumerate(["pocket_noisy", "ImageNet"])
        for k in (1, 16)
        for s in (1, 2)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    compute_stats(pd.read_csv(tmp_path / "summary.csv"), fast).to_csv(tmp_path / "stats.csv", index=False)
    cfg = {
        "experiment": "x",
        "protocol": "fewshot",
        "methods": ["coop", "tip_adapter"],
        "shots": [1, 16],
        "datasets": ["pocket_noisy", "ImageNet"],
        "stats": fast,
        "method_overrides": {**SCOPED, "tip_adapter": {"by_dataset": {"ImageNet": {"search_split": "test"}}}},
    }
    render(tmp_path / "summary.csv", tmp_path / "stats.csv", tmp_path / "report", cfg)
    md = (tmp_path / "report" / "report.md").read_text()
    provenance = md[md.index("## Provenance") :]
    for scope, values in [
        ("every run", '{"epochs": 200, "lr": 0.1}'),
        ("1 shots", '{"epochs": 50, "lr": 0.3}'),
        ("ImageNet", '{"epochs": 60}'),
        ("ImageNet, 1 shots", '{"epochs": 70}'),
        ("ImageNet", '{"search_split": "test"}'),
    ]:
        assert re.search(rf"\| \w+\s+\| {re.escape(scope)}\s+\| {re.escape(values)}", provenance), scope
    assert "2 shots" not in provenance and "DTD" not in provenance  # not in this experiment's grid
    assert "tip_adapter on ImageNet: hyperparameters chosen on the test set" in provenance
    assert config.override_rows({"methods": ["coop"], "method_overrides": {}}) == []


def test_training_records_the_settings_of_its_run(tmp_path):
    """A run trains with its (dataset, shots) settings, read from the jobs' JSON config, and records them."""
    from vlprompt.cli import main as cli

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="scoped",
        data_root=str(tmp_path / "data"),
        results_root=str(tmp_path / "results"),
        reports_root=str(tmp_path / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["coop"],
        method_overrides={
            "coop": {"epochs": 1, "batch_size": 8, "by_dataset": {"pocket_noisy": {"by_shots": {2: {"epochs": 2}}}}}
        },
    )
    cfg["pocket"]["per_class"] = {"train": 2, "val": 2, "test": 1}
    cfg["features"]["train_views"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(validate(cfg)))  # as the DAG's jobs read it: by_shots keys become strings
    prepare_run_inputs(path, "pocket_noisy", shots=2)
    out = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                "--config",
                str(path),
                "--dataset",
                "pocket_noisy",
                "--method",
                "coop",
                "--shots",
                "2",
                "--seed",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hyperparameters"]["epochs"] == 2 and len(metrics["train"]["loss_history"]) == 2
    assert metrics["overrides"] == {"epochs": 2, "batch_size": 8}
    assert metrics["config_hash"] == method_config_hash(json.loads(path.read_text()), "coop", "pocket_noisy", 2)


@pytest.mark.parametrize("name", ["fewshot", "base2novel", "crossdataset", "domain_generalization"])
def test_real_configs_validate(name):
    validate(yaml.safe_load(Path(f"config/{name}.yaml").read_text()))


def run_config(cfg, method, dataset, shots):
    """The Config a run trains with: the preset with the run's overrides."""
    from vlprompt.methods import get_method

    return get_method(method).make_config(config.method_settings(cfg, method, dataset, shots))


def test_fewshot_config_carries_the_references_schedules():
    cfg = validate(yaml.safe_load(Path("config/fewshot.yaml").read_text()))
    epochs = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}  # CoOp COOP.md; ProGrad README
    for method in ("coop", "prograd"):
        for k, e in epochs.items():
            assert run_config(cfg, method, "Caltech101", k).epochs == e, (method, k)
            assert run_config(cfg, method, "ImageNet", k).epochs == 50, (method, k)  # *_ep50 on ImageNet
    assert (run_config(cfg, "coop", "DTD", 1).n_ctx, run_config(cfg, "coop", "DTD", 1).ctx_init) == (16, None)
    for d in ("Flowers102", "DTD", "EuroSAT"):  # ProGrad README: lambda 0.8 at 8 and 16 shots
        assert [run_config(cfg, "prograd", d, k).prograd_lambda for k in (4, 8, 16)] == [1.0, 0.8, 0.8]
    assert run_config(cfg, "prograd", "Caltech101", 16).prograd_lambda == 1.0
    tip = {d: config.method_settings(cfg, "tip_adapter_f", d, 16) for d in cfg["datasets"]}  # configs/*.yaml
    assert tip["EuroSAT"]["epochs"] == 100 and "epochs" not in tip["DTD"]
    assert (tip["DTD"]["beta_max"], tip["DTD"]["alpha_max"], tip["DTD"]["init_alpha"]) == (13, 13, 2)
    assert (tip["FGVCAircraft"]["beta_max"], tip["Flowers102"]["init_alpha"]) == (30, 10)
    assert tip["ImageNet"] == {"search_split": "test"}  # main_imagenet.py searches on the test set
    assert config.method_settings(cfg, "tip_adapter", "ImageNet", 1) == {"search_split": "test"}


def test_transfer_and_base2novel_configs_carry_the_references_settings():
    b2n = validate(yaml.safe_load(Path("config/base2novel.yaml").read_text()))
    assert run_config(b2n, "prograd", "DTD", 16).epochs == 100  # base2new_train_prograd.sh: rn50_ep100
    assert run_config(b2n, "prograd", "ImageNet", 16).epochs == 50  # its README: rn50_ep50 on ImageNet
    assert run_config(b2n, "coop", "ImageNet", 16).epochs == 50  # CoOp base2new_train.sh: vit_b16_ep50_ctxv1
    assert run_config(b2n, "coop", "DTD", 16).epochs == 200
    for name in ("crossdataset", "domain_generalization"):
        cfg = validate(yaml.safe_load(Path(f"config/{name}.yaml").read_text()))
        assert run_config(cfg, "coop", "ImageNet", 16).epochs == 50  # xd_train.sh: vit_b16_ep50_ctxv1
        assert config.method_settings(cfg, "maple", "ImageNet", 16) == {"depth": 3, "lr": 0.0026, "epochs": 2}
        # HiCroPL vit_b16_c2_ep5_batch32_2ctx_cross_datasets.yaml
        hicropl = run_config(cfg, "hicropl", "ImageNet", 16)
        assert (hicropl.epochs, hicropl.n_ctx, hicropl.cross_layer, hicropl.depth) == (5, 2, 5, 6)
