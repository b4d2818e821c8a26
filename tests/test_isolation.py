"""Every experiment is its own, from a fresh clone, replayed as a new user would hit it.

- A fresh clone plans the whole DAG for every shipped config (nothing committed in its way), and a run
  leaves `git status` clean.
- A config given with --configfile is the whole experiment: nothing from config/config.yaml leaks in.
- Two experiments in one folder at once: both finish with correct results when they build nothing in
  common, or the second stops at once naming the first.
- Faults: a failing job removes only its own outputs; a truncated bank or model, a deleted bank or run is
  rebuilt and the tables follow; after `kill -9` of Snakemake its jobs stop and one command recovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TEST_ENV, copy_tree
from vlprompt.experiment.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pocket_tiny.yaml"
ENV = TEST_ENV
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "config").rglob("*.yaml") if "published" not in p.parts)
# the dry runs the two tests over every config read: each config with --configfile, and the default one without
EVERY_PLAN = [(str(config), True) for config in CONFIGS] + [("config/config.yaml", False)]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def write_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        cfg[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def digests(root: Path, *parts: str) -> dict[str, str]:
    out = {}
    for part in parts:
        for f in sorted((root / part).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def planned(text: str) -> dict[str, int]:
    """Jobs per rule of a dry run's job-stats table (``text``: its stdout and stderr)."""
    import re

    if "Job stats:" not in text:
        return {}
    body = text[text.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", body, re.M) if m.group(1) != "total"}


# --- a fresh clone ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fresh_clone_plans_the_whole_dag_of_every_config(config_plans):
    """Nothing committed at a path the DAG writes: for every shipped config, `snakemake -n` in a fresh clone plans
    every job up to the report (no "Nothing to be done"). The dry runs are conftest's config_plans, shared with
    the tests that check one config's plan or resolved config."""
    assert CONFIGS, "no configs found"
    clone = config_plans.clone
    config_plans.prefetch(EVERY_PLAN)  # in one process, for this test and the next
    for config in CONFIGS:
        cfg = load_config(clone / config, check_names=False)
        plan = config_plans(str(config), given=config != Path("config/config.yaml"))
        assert plan.returncode == 0, (config, plan.output[-3000:])
        jobs = planned(plan.output)
        assert jobs.get("report") == 1 and jobs.get("aggregate") == 1, (config, plan.output[-2000:])
        assert any(rule.startswith("train") for rule in jobs), (config, jobs)
        trained = [m for m in cfg["methods"] if m not in ("zeroshot", "zeroshot_ensemble")]
        if trained:
            assert jobs.get("sample_fewshot", 0) >= 1, (config, jobs)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == "", status.stdout  # dry runs wrote only ignored files (resolved configs)


@pytest.mark.slow
def test_a_run_in_a_fresh_clone_leaves_git_status_clean(tiny_clone):
    """A fresh clone (its config the tiny pocket config, committed) after `snakemake --cores 2` ran the whole DAG:
    nothing untracked, nothing changed. The same run is tests/test_dvc.py's reference."""
    run = tiny_clone["run"]
    assert (run / "reports" / "tiny" / "index.html").exists()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=run, capture_output=True, text=True
    )
    assert status.stdout == "", status.stdout


def as_json(value):
    return json.loads(json.dumps(value))


@pytest.mark.slow
def test_a_configfile_is_the_whole_experiment(config_plans, tmp_path):
    """Through the Snakefile: each shipped config resolves to its own keys plus the schema's defaults,
    never to config/config.yaml's (its method overrides, pocket notes, grid); the default config applies
    only when none is given, and `method_overrides: {}` means no overrides."""
    defaults = load_config(REPO / "config" / "config.yaml")
    config_plans.prefetch(EVERY_PLAN)  # in one process, for this test and the one before
    for config in CONFIGS:  # each with --configfile, in a fresh clone (conftest's config_plans)
        own = yaml.safe_load((REPO / config).read_text())
        plan = config_plans(str(config))
        assert plan.returncode == 0, (config, plan.output[-3000:])
        resolved = plan.resolved
        expected = load_config(REPO / config)
        notes = expected["report"].get("notes_file")
        if notes and not (config_plans.clone / notes).exists():  # found in the workflow's folder (-d elsewhere)
            expected["report"]["notes_file"] = str(REPO / notes)
        # config.json is JSON: YAML's `by_shots: {1: ...}` keys come back as "1" (overrides.py reads both)
        assert resolved == as_json(expected), config
        assert resolved["method_overrides"] == as_json(own.get("method_overrides", {})), config
        if "report" not in own or "notes_file" not in own.get("report", {}):
            assert "notes_file" not in resolved["report"], config
        if config != Path("config/config.yaml"):
            assert resolved["experiment"] != defaults["experiment"], config
    empty = write_config(tmp_path / "empty.yaml", method_overrides={})
    snakemake(tmp_path / "empty_run", "-n", "--quiet", "rules", "--configfile", str(empty))
    assert json.loads((tmp_path / "empty_run/results/tiny/config.json").read_text())["method_overrides"] == {}


# --- one finished reduced experiment, copied for each fault ---------------------------------------------------


@pytest.fixture
def finished(tiny_finished_run):
    """The tiny pocket config with seeds 1 and 2, run once per test run (conftest's tiny_finished_run)."""
    return tiny_finished_run


def copy_of(finished: Path, tmp_path: Path) -> Path:
    return copy_tree(finished, tmp_path / "work")


def run_files(work: Path) -> list[Path]:
    return sorted((work / "results" / "tiny" / "runs").rglob("metrics.json"))


@pytest.mark.slow
def test_a_failing_job_removes_only_its_own_outputs(finished, tmp_path):
    work = copy_of(finished, tmp_path)
    shared = digests(work, "data", "results/splits", "results/features", "results/tiny")
    other = write_config(tmp_path / "more_shots.yaml", experiment="more", shots=[2, 50])  # 50 > 4 images a class
    proc = snakemake(work, "--cores", "1", "--configfile", str(other), check=False)
    assert proc.returncode != 0
    assert "only 4 train images, fewer than the 50 shots" in proc.stdout + proc.stderr
    assert digests(work, "data", "results/splits", "results/features", "results/tiny") == shared
    assert not list((work / "results" / "splits").rglob("shot50_seed*.json"))


@pytest.mark.slow
def test_a_truncated_bank_is_named_then_rebuilt_with_what_follows(finished, tmp_path):
    work = copy_of(finished, tmp_path)
    bank = next((work / "results" / "features").rglob("shot2_seed1.train.npy"))
    before = pd.read_csv(work / "results/tiny/summary.csv")
    with open(bank, "r+b") as f:
        f.truncate(1000)
    # a reader names the file and the command that rebuilds it, in one line
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlprompt",
            "train",
            "--config",
            "results/tiny/config.json",
            "--dataset",
            "pocket_dark",
            "--method",
            "coop",
            "--shots",
            "2",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ],
        cwd=work,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert f"corrupt artefact {bank.relative_to(work)}: 1000 bytes" in line
    assert f"rebuild it with: snakemake --cores all --force {bank.relative_to(work)}" in line
    # the pipeline moves it aside and rebuilds it, then the runs that read it, then the tables
    proc = snakemake(work, "--cores", "2")
    assert "corrupt artefact" in proc.stderr and bank.exists() and bank.with_name(bank.name + ".corrupt").exists()
    after = pd.read_csv(work / "results/tiny/summary.csv")
    pd.testing.assert_frame_equal(before, after)  # rebuilt to the same numbers
    proc = snakemake(work, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_deleted_bank_or_run_is_rebuilt_and_the_summary_follows(finished, tmp_path):
    work = copy_of(finished, tmp_path)
    next((work / "results" / "features").rglob("test.npy")).unlink()
    run = work / "results/tiny/runs/pocket_dark/coop/2shot/seed2"
    (run / "metrics.json").unlink()
    summary = work / "results/tiny/summary.csv"
    stamp = summary.stat().st_mtime_ns
    proc = snakemake(work, "-n")
    jobs = planned(proc.stdout + proc.stderr)
    assert jobs.get("extract_test") == 1 and jobs.get("aggregate") == 1, jobs
    snakemake(work, "--cores", "2")
    assert (run / "metrics.json").exists() and summary.stat().st_mtime_ns > stamp
    assert len(pd.read_csv(summary)) == 2 * 2  # zeroshot and coop x seeds 1, 2


@pytest.mark.slow
def test_a_truncated_model_is_noticed_and_retrained(finished, tmp_path):
    work = copy_of(finished, tmp_path)
    model = work / "results/tiny/runs/pocket_dark/coop/2shot/seed1/model.pt"
    before = model.read_bytes()
    model.write_bytes(before[: len(before) // 2])
    proc = snakemake(work, "--cores", "2")
    assert f"corrupt artefact {model.relative_to(work)}" in proc.stderr
    assert model.read_bytes() == before  # retrained to the same bytes (same config and seed)


@pytest.mark.xdist_group("timing")  # waits on other processes with deadlines: one at a time (docs/testing.md)
@pytest.mark.slow
def test_two_experiments_at_once_share_artefacts_without_touching_each_other(finished, tmp_path):
    """The second starts while the first trains: it needs the first's data and features (built) and
    few-shot subsets of its own; both finish, the first's files are untouched and each run carries its own
    experiment's settings."""
    work = copy_of(finished, tmp_path)
    slow = write_config(
        tmp_path / "slow.yaml", experiment="slow", seeds=[1, 2], method_overrides={"coop": {"epochs": 300}}
    )
    other = write_config(
        tmp_path / "other.yaml", experiment="other", shots=[1], seeds=[1], method_overrides={"coop": {"epochs": 2}}
    )
    shared = digests(work, "data", "results/splits", "results/features")
    first = subprocess.Popen(
        SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "1", "--configfile", str(slow)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((work / "results/slow/logs").rglob("*.log")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, first.communicate()[0][-3000:]
        second = snakemake(work, "--cores", "1", "--configfile", str(other))
        assert "another Snakemake run works in this folder: experiment 'slow'" in second.stderr
        out, _ = first.communicate(timeout=900)
        assert first.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    after = digests(work, "data", "results/splits", "results/features")
    assert {k: v for k, v in after.items() if k in shared} == shared  # nothing shared was rewritten
    assert any("shot1_seed1" in k for k in after) and not any("shot1_seed1" in k for k in shared)
    for name, epochs in (("slow", 300), ("other", 2)):
        for path in (work / "results" / name / "runs").rglob("metrics.json"):
            m = json.loads(path.read_text())
            assert m["experiment"] == name
            if m["method"] == "coop":
                assert m["hyperparameters"]["epochs"] == epochs


@pytest.mark.xdist_group("timing")  # waits on other processes with deadlines: one at a time (docs/testing.md)
@pytest.mark.slow
def test_a_second_experiment_needing_the_same_new_files_stops_at_once_naming_the_first(tmp_path):
    first_cfg = write_config(tmp_path / "first.yaml", experiment="first", method_overrides={"coop": {"epochs": 300}})
    second_cfg = write_config(tmp_path / "second.yaml", experiment="second")
    work = tmp_path / "work"
    work.mkdir()
    first = subprocess.Popen(
        SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "1", "--configfile", str(first_cfg)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((work / ".snakemake" / "vlprompt-runs").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        # as plain snakemake and as `make run` would (stale-lock removal leaves a live run's lock alone, then
        # snakemake --rerun-incomplete): Snakemake refuses the first's lock or its files being written
        unlock = subprocess.run(
            [sys.executable, "-m", "vlprompt", "unlock-stale"], cwd=work, env=ENV, capture_output=True, text=True
        )
        assert "removed" not in unlock.stdout and "experiment 'first'" in unlock.stdout, unlock.stdout
        for extra in ([], ["--rerun-incomplete"]):
            start = time.monotonic()
            second = snakemake(work, "--cores", "1", "--configfile", str(second_cfg), *extra, check=False)
            took = time.monotonic() - start
            assert second.returncode != 0, extra
            assert "another Snakemake run works in this folder: experiment 'first'" in second.stderr, extra
            said = second.stdout + second.stderr  # which of Snakemake's refusals comes first depends on timing
            assert "cannot be locked" in said or "Incomplete files" in said, (extra, said[-2000:])
            assert took < 60 and not (work / "results" / "second" / "runs").exists(), extra
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.xdist_group("timing")  # waits on other processes with deadlines: one at a time (docs/testing.md)
@pytest.mark.slow
def test_after_kill_9_the_jobs_stop_and_one_command_recovers(finished, tmp_path):
    """`kill -9` of Snakemake mid-run: its jobs stop with it (no orphans), and the commands `make run`
    runs (unlock-stale, then snakemake --rerun-incomplete) finish the experiment."""
    work = copy_of(finished, tmp_path)
    cfg = write_config(
        work / "config" / "config.yaml",
        seeds=[1, 2],
        experiment="killed",
        method_overrides={"coop": {"epochs": 400}},
        train={"device": "cpu", "threads": 1, "checkpoint_every": 5, "job_granularity": "run"},
    )
    proc = subprocess.Popen(
        SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "2"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    checkpoints = []
    while not checkpoints and time.monotonic() < deadline and proc.poll() is None:
        checkpoints = list((work / "results/killed/runs").rglob("checkpoint.pt"))
        time.sleep(0.2)
    assert checkpoints, "no training job reached a checkpoint"
    children = _descendants(proc.pid)
    assert children, "no job processes found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if _alive(p) and b"vlprompt" in _cmdline(p)], "orphaned jobs still run"
    assert (work / ".snakemake" / "locks").exists() and any((work / ".snakemake" / "locks").iterdir())
    unlock = subprocess.run(
        [sys.executable, "-m", "vlprompt", "unlock-stale"], cwd=work, env=ENV, capture_output=True, text=True
    )
    assert "removed the stale Snakemake lock" in unlock.stdout, unlock.stdout + unlock.stderr
    snakemake(work, "--cores", "2", "--rerun-incomplete")
    assert len(pd.read_csv(work / "results/killed/summary.csv")) == 2 * 2
    assert not list((work / "results/killed/runs").rglob("checkpoint.pt"))
    assert yaml.safe_load(cfg.read_text())["experiment"] == "killed"


def test_make_run_is_the_recovery_command():
    out = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, env=ENV).stdout
    assert "-m vlprompt unlock-stale" in out and "--rerun-incomplete" in out


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for line in out:
        if line.strip():
            p, pp = map(int, line.split())
            children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
