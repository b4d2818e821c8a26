"""End-to-end: the whole Snakemake DAG on a reduced pocket config in a temporary directory."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# the rules call `python -m vlprompt`: the interpreter running the tests must be the one on PATH
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def reduced_config(**changes):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(
        experiment="e2e",
        datasets=["pocket_noisy", "pocket_dark"],
        shots=[2, 16],
        seeds=[1, 2],
        methods=["zeroshot", "linear_probe", "coop"],
    )
    cfg["pocket"]["per_class"] = {"train": 16, "val": 4, "test": 10}
    cfg["features"]["train_views"] = 4
    cfg["method_overrides"] = {"coop": {"epochs": 10}}
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(reduced_config()))
    proc = subprocess.run(SNAKEMAKE + ["-d", str(work), "--cores", "2"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


@pytest.fixture(scope="module")
def commands_after_the_run(workdir, tmp_path_factory):
    """Snakemake's command line on the finished run, the three in one process (tests/dry_runs.py): the packed
    report (``--report``), a second run's dry run (``--cores 2 -n``) and ``--lint``; their CompletedProcesses, and
    the packed report's path."""
    from dry_runs import snakemake_calls

    packed = tmp_path_factory.mktemp("packed") / "report.html"
    on_the_run = ["-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    report, dry, lint = snakemake_calls(
        [on_the_run + ["--report", str(packed)], on_the_run + ["--cores", "2", "-n"], on_the_run + ["--lint"]], ENV
    )
    return {"report": report, "dry": dry, "lint": lint, "packed": packed}


@pytest.mark.slow
def test_summary_has_every_row_with_sane_values(workdir):
    df = pd.read_csv(workdir / "results" / "e2e" / "summary.csv")
    assert {"method", "dataset", "shots", "seed", "base_acc", "new_acc", "hm"} <= set(df.columns)
    assert len(df) == 3 * 2 * 2 * 2  # methods x datasets x shots x seeds (zero-shot repeated)
    assert set(df.method) == {"zeroshot", "linear_probe", "coop"}
    assert df.base_acc.between(0, 100).all()
    chance = 100 / 36  # the default world's 36 new classes
    zs = df[df.method == "zeroshot"]
    assert (zs.new_acc >= 5 * chance).all(), zs
    assert df[df.method == "linear_probe"].new_acc.isna().all()  # cannot classify unseen classes
    import json

    for path in (workdir / "results" / "e2e" / "runs").rglob("linear_probe/*/seed*/metrics.json"):
        # fitted on un-augmented training features, as CoOp's lpclip (the bank's .plain part)
        assert json.loads(path.read_text())["method_info"]["features"] == "plain", path
    coop = df[(df.method == "coop") & (df.shots == 16)]
    zs16 = zs[zs.shots == 16]
    assert coop.base_acc.mean() > zs16.base_acc.mean(), (coop.base_acc.mean(), zs16.base_acc.mean())
    hm = 2 * df.base_acc * df.new_acc / (df.base_acc + df.new_acc)
    pd.testing.assert_series_equal(df.hm.dropna(), hm.dropna(), check_names=False, atol=1e-3)


@pytest.mark.slow
def test_report_is_rendered(workdir):
    report = workdir / "reports" / "e2e"
    md = (report / "report.md").read_text()
    assert "coop" in md and "pocket_dark" in md
    assert (report / "index.html").stat().st_size > 1000
    assert list((report / "figures").glob("*.png"))
    # the training curves: one CSV per trained run (coop: 2 datasets x 2 shots x 2 seeds; the linear probe fits
    # in closed form, zero-shot does not train), and their figure on the first dataset
    curves = sorted((workdir / "results" / "e2e" / "curves").rglob("*.csv"))
    assert len(curves) == 8 and all("/coop/" in str(c) for c in curves)
    assert len(pd.read_csv(curves[0])) == 10  # coop's 10 epochs
    assert (report / "figures" / "training_curves.png").exists() and "training_curves.png" in md


@pytest.mark.slow
def test_snakemakes_packed_report_embeds_every_figure_with_its_caption(workdir, commands_after_the_run):
    import base64
    import re

    packed, proc = commands_after_the_run["packed"], commands_after_the_run["report"]  # snakemake --report
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = packed.read_text()
    pngs = sorted((workdir / "reports" / "e2e" / "figures").glob("*.png"))
    assert pngs
    for png in pngs:  # open the packed report: each figure is there, with its caption, byte for byte
        entry = re.search(
            rf'"reports/e2e/figures/{png.name}": {{(.*?)"data_uri": "data:image/png;[^"]*?base64,'
            r'([A-Za-z0-9+/=]+)"',
            text,
            re.S,
        )
        assert entry, png.name
        caption = re.search(r'"caption": "(.*?)", "mime_type"', entry.group(1), re.S)
        assert caption and len(caption.group(1)) > 80 and "Figure " not in caption.group(1), png.name
        assert base64.b64decode(entry.group(2)) == png.read_bytes(), png.name
    assert '"reports/e2e/index.html"' in text


@pytest.mark.slow
def test_second_run_does_nothing(commands_after_the_run):
    proc = commands_after_the_run["dry"]  # snakemake --cores 2 -n
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_lint_reports_nothing(commands_after_the_run):
    proc = commands_after_the_run["lint"]  # snakemake --lint
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_config_fails_at_once_naming_the_key(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(reduced_config(sheds=[1])))
    proc = subprocess.run(SNAKEMAKE + ["-d", str(tmp_path), "-n"], capture_output=True, text=True, env=ENV)
    assert proc.returncode != 0
    assert "sheds" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_new_shots_setting_adds_jobs_and_reruns_nothing(workdir, tmp_path):
    """Another shots grid in the same folder: only the new subsets, their features and their training runs
    are planned; the new subsets' features are copied from the banks that already hold their images (the
    16-shot subset here holds every training image); nothing done before is rewritten."""
    import json
    import shutil

    work = tmp_path / "work"
    shutil.copytree(workdir, work, symlinks=True)
    cfg = reduced_config(shots=[2, 4, 16])
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = ("logs", "benchmarks")  # each job's log and timing record, rewritten by the jobs that run again
    before = {
        p: p.stat().st_mtime_ns
        for p in (work / "results").rglob("*")
        if p.is_file() and not any(r in p.parts for r in records)
    }
    proc = subprocess.run(
        SNAKEMAKE + ["-d", str(work), "-n", "--quiet", "rules"], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", text[text.index("Job stats:") :], re.M))
    # 2 datasets x 2 seeds new subsets; linear_probe and coop x 2 datasets at 4 shots
    assert jobs == {
        "sample_fewshot": "4",
        "extract_fewshot": "4",
        "train_group": "4",
        "aggregate": "1",
        "report": "1",
        "all": "1",
        "total": "15",
    }, jobs
    proc = subprocess.run(SNAKEMAKE + ["-d", str(work), "--cores", "2"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sidecar in (work / "results" / "features").rglob("shot4_seed*.train.json"):
        meta = json.loads(sidecar.read_text())
        assert meta["copied_rows"] == len(meta["rows"]) > 0, sidecar  # not one image encoded again
    tables = {work / "results" / "e2e" / name for name in ("summary.csv", "stats.csv", "metrics.json", "config.json")}
    curves = work / "results" / "e2e" / "curves"  # the aggregate's tables of every run's curves, rewritten with it
    changed = [
        p
        for p, t in before.items()
        if p not in tables and curves not in p.parents and (not p.exists() or p.stat().st_mtime_ns != t)
    ]
    assert changed == [], changed
    summary = pd.read_csv(work / "results" / "e2e" / "summary.csv")
    assert sorted(summary.shots.unique()) == [2, 4, 16]


def planned_jobs(config_plans, config: str) -> dict[str, str]:
    """The job-stats table of the config's dry run in a fresh clone (conftest's config_plans)."""
    plan = config_plans(config)
    assert plan.returncode == 0, plan.output[-3000:]
    text = plan.output
    return dict(re.findall(r"^(\w+)\s+(\d+)$", text[text.index("Job stats:") :], re.M))


def test_declared_inputs_add_their_jobs_and_the_default_plan_keeps_its_own(config_plans):
    """Declared inputs: the unlabelled training split, the test views and the multitask stage are jobs only for the
    methods that declare them (4 datasets; 3 seeds of one multitask method); the default experiment plans what it
    did."""
    config_plans.prefetch([("config/pocket_wave3.yaml", True), ("config/config.yaml", True)])  # in one process
    assert planned_jobs(config_plans, "config/pocket_wave3.yaml") == {
        "prepare_dataset": "6",
        "extract_test": "4",
        "extract_test_views": "4",
        "extract_unlabelled": "4",
        "sample_fewshot": "18",
        "split_classes": "6",
        "extract_fewshot": "18",
        "train_zeroshot": "28",
        "train_group": "16",
        "train_multitask": "3",
        "aggregate": "1",
        "report": "1",
        "all": "1",
        "total": "110",
    }
    assert planned_jobs(config_plans, "config/config.yaml") == {
        "prepare_dataset": "4",
        "extract_test": "4",
        "sample_fewshot": "12",
        "split_classes": "4",
        "extract_fewshot": "12",
        "train_zeroshot": "8",
        "train_group": "40",
        "aggregate": "1",
        "report": "1",
        "all": "1",
        "total": "87",
    }
