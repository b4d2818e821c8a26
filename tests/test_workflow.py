"""What keeps experiments apart and faults contained, unit by unit: dataset keys, few-shot strictness,
records of running pipelines, stale locks, the job watchdog, artefact integrity, the Python versions."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from vlprompt.data import registry, splits
from vlprompt.experiment import grid
from vlprompt.io import CorruptArtefactError
from vlprompt.pipeline import integrity, run_registry, workflow

REPO = Path(__file__).resolve().parents[1]


def default_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# --- keys of shared artefacts -----------------------------------------------------------------------------


def test_pocket_datasets_are_keyed_by_their_world_and_real_ones_by_name():
    cfg = default_config()
    key = grid.dataset_key(cfg, "pocket_dark")
    assert re.fullmatch(r"pocket_dark-[0-9a-f]{8}", key)
    assert grid.dataset_key({**cfg, "experiment": "other", "methods": ["coop"]}, "pocket_dark") == key
    for change in ({"label_order": "shuffled"}, {"seed": 1}, {"per_class": {"train": 5}}, {"n_colours": 4}):
        other = {**cfg, "pocket": {**cfg["pocket"], **change}}
        assert grid.dataset_key(other, "pocket_dark") != key, change
    assert grid.dataset_key(cfg, "DTD") == "DTD"
    shuffled = {**cfg, "pocket": {**cfg["pocket"], "label_order": "shuffled"}}
    paths = [
        grid.classes_path,
        lambda c, d: grid.fewshot_path(c, d, 16, 1),
        grid.features_dir,
        lambda c, d: grid.fewshot_features(c, d, 16, 1),
        registry.split_path,
    ]
    for path in paths:  # every shared artefact of the dataset moves with its key
        assert path(cfg, "pocket_dark") != path(shuffled, "pocket_dark")


def test_views_key_names_the_training_transform():
    cfg = default_config()
    cfg["features"] = {"train_views": 10, "crop_scale_min": 0.5}
    assert grid.views_key(cfg).startswith("views10_crop0.5_")
    more = {**cfg, "features": {"train_views": 20, "crop_scale_min": 0.5}}
    assert grid.fewshot_features(cfg, "pocket_dark", 16, 1) != grid.fewshot_features(more, "pocket_dark", 16, 1)
    assert grid.features_dir(cfg, "pocket_dark") == grid.features_dir(more, "pocket_dark")  # test bank shared


def test_a_subset_sampled_with_allow_fewer_is_refused_without_it(tmp_path):
    rows = [[f"c{c}/{i}.png", c, f"class_{c}"] for c in range(2) for i in range(3 if c == 0 else 1)]
    split = {"train": rows, "val": rows, "test": rows}
    with pytest.raises(splits.SplitError, match="only 1 train images.*allow_fewer"):
        splits.fewshot_sample(split, 2, 1, strict=True)
    path = tmp_path / "shot2_seed1.json"
    splits.write_fewshot(path, splits.fewshot_sample(split, 2, 1, strict=False), 2, 1)
    assert splits.read_fewshot(path, allow_fewer=True)["short_classes"] == ["class_1"]
    with pytest.raises(splits.SplitError, match="fewer than 2 images for 1 classes"):
        splits.read_fewshot(path, allow_fewer=False)
    path.write_text(path.read_text()[:40])  # truncated
    with pytest.raises(CorruptArtefactError, match="not valid JSON.*--force"):
        splits.read_fewshot(path, allow_fewer=True)


# --- pipelines sharing a folder -----------------------------------------------------------------------------


def test_running_pipelines_are_recorded_and_stale_records_dropped(tmp_path):
    cfg = {"experiment": "first"}
    path = run_registry.register_run(cfg, ["snakemake", "--cores", "2"], root=tmp_path)
    assert path.exists()
    assert run_registry.running(tmp_path) == []  # our own record is not "another run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        record = {"experiment": "second", "pid": other.pid, "host": host, "started": "now", "command": "snakemake"}
        (tmp_path / run_registry.RUNS_DIR / f"{host}-{other.pid}.json").write_text(json.dumps(record))
        found = run_registry.running(tmp_path)
        assert [r["experiment"] for r in found] == ["second"]
        assert "experiment 'second'" in run_registry.describe(found[0]) and str(other.pid) in run_registry.describe(
            found[0]
        )
    finally:
        other.kill()
        other.wait()
    assert run_registry.running(tmp_path) == []  # its process is gone: the record is removed
    assert not (tmp_path / run_registry.RUNS_DIR / f"{host}-{other.pid}.json").exists()
    run_registry.unregister_run(tmp_path)
    assert not path.exists()


def test_a_stale_lock_is_removed_only_when_no_snakemake_works_there(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("x")
    assert run_registry.unlock_stale(tmp_path).startswith("removed the stale Snakemake lock")
    assert list(locks.iterdir()) == []
    assert run_registry.unlock_stale(tmp_path) is None  # nothing to do
    (locks / "0.input.lock").write_text("x")
    # a process named snakemake working in that folder: the lock is left alone
    fake = tmp_path / "bin" / "snakemake"  # a python script: one process, no forked child sharing its name
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(fake), "--cores", "1"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not run_registry.snakemake_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run_registry.snakemake_processes(tmp_path) == [proc.pid]
        assert run_registry.unlock_stale(tmp_path) is None and (locks / "0.input.lock").exists()
    finally:
        proc.kill()
        proc.wait()
    # a run recorded by another host (a shared file system) cannot be checked: left alone too
    (tmp_path / run_registry.RUNS_DIR).mkdir(parents=True)
    record = {"experiment": "x", "pid": 1, "host": "another-node", "started": "now", "command": "snakemake"}
    (tmp_path / run_registry.RUNS_DIR / "another-node-1.json").write_text(json.dumps(record))
    assert run_registry.unlock_stale(tmp_path) is None and (locks / "0.input.lock").exists()


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_job_stops_when_its_snakemake_is_killed(tmp_path, sigint):
    """`kill -9` of Snakemake leaves its jobs orphaned; a vlprompt job watches the process named in
    $VLPROMPT_SNAKEMAKE and stops (KeyboardInterrupt first, so temporary files are cleaned up), also when it
    inherited SIGINT ignored (a snakemake started with `&` from a script)."""
    disposition = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    marker, ready = tmp_path / "interrupted", tmp_path / "watching"
    code = textwrap.dedent(f"""
        import time
        from vlprompt.pipeline.watchdog import watch
        watch({parent.pid}, interval_s=0.1, grace_s=5)
        try:
            open({str(ready)!r}, "w").write("yes")
            time.sleep(60)
        except KeyboardInterrupt:
            open({str(marker)!r}, "w").write("yes")
            raise
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    deadline = time.monotonic() + 60  # the child's imports take seconds on a loaded machine
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert ready.exists() and child.poll() is None  # watching, and still running while its parent lives
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    child.wait(timeout=15)
    assert marker.read_text() == "yes" and child.returncode != 0


def test_the_watchdog_watches_only_a_snakemake_of_this_host(monkeypatch):
    from vlprompt.pipeline import watchdog

    monkeypatch.setenv(workflow.PARENT_ENV, f"another-node:{os.getppid()}")
    assert watchdog.start_from_environment() is None
    monkeypatch.setenv(workflow.PARENT_ENV, "garbage")
    assert watchdog.start_from_environment() is None
    monkeypatch.delenv(workflow.PARENT_ENV)
    assert watchdog.start_from_environment() is None


# --- integrity ---------------------------------------------------------------------------------------------


def test_integrity_check_finds_truncated_banks_models_and_broken_json(tmp_path):
    from vlprompt.io import file_record

    bank, model = tmp_path / "test.npy", tmp_path / "run" / "model.pt"
    model.parent.mkdir()
    bank.write_bytes(b"x" * 100)
    (tmp_path / "test.json").write_text(json.dumps({"file": file_record(bank)}))
    model.write_bytes(b"y" * 50)
    (model.parent / "metrics.json").write_text(json.dumps({"artefacts": {"model.pt": file_record(model)}}))
    classes = tmp_path / "classes.json"
    classes.write_text('{"classnames": ["a"]}')
    paths = [bank, tmp_path / "test.json", model, model.parent / "metrics.json", classes, tmp_path / "absent.npy"]
    assert integrity.check(paths) == []
    bank.write_bytes(b"x" * 60)
    model.write_bytes(b"y" * 10)
    classes.write_text('{"classnames": [')
    found = dict(integrity.check(paths))
    assert set(found) == {bank, model, classes}
    assert found[bank] == "60 bytes, 100 when it was written" and "JSON" in found[classes]
    assert integrity.check(paths, skip_under=tmp_path) == []
    moved = integrity.move_aside(bank)
    assert moved.name == "test.npy.corrupt" and not bank.exists()


def test_a_damaged_model_is_refused_with_the_rebuild_command(tmp_path):
    import torch

    from vlprompt.io import file_record
    from vlprompt.training.records import load_model_state

    torch.save({"state": {}}, tmp_path / "model.pt")
    (tmp_path / "metrics.json").write_text(json.dumps({"artefacts": {"model.pt": file_record(tmp_path / "model.pt")}}))
    assert load_model_state(tmp_path, torch.device("cpu")) == {"state": {}}
    with open(tmp_path / "model.pt", "r+b") as f:
        f.truncate(20)
    with pytest.raises(CorruptArtefactError, match=r"model\.pt: 20 bytes.*snakemake --cores all --force"):
        load_model_state(tmp_path, torch.device("cpu"))


def test_rebuild_command_names_the_experiments_config_file(monkeypatch):
    from vlprompt.io import rebuild_command

    monkeypatch.setenv(workflow.CONFIGFILES_ENV, "config/base2novel.yaml")
    assert rebuild_command("results/x.npy") == (
        "snakemake --cores all --configfile config/base2novel.yaml --force results/x.npy"
    )
    monkeypatch.delenv(workflow.CONFIGFILES_ENV)
    assert rebuild_command("results/x.npy") == "snakemake --cores all --force results/x.npy"


# --- Python versions -------------------------------------------------------------------------------------


def supported_versions() -> list[str]:
    """The minor versions pyproject.toml's requires-python admits (">=3.A,<3.B")."""
    import tomllib

    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec.replace(" ", "")).groups()
    return [f"3.{m}" for m in range(int(low), int(high))]


def test_the_makefile_picks_from_the_supported_versions():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^SUPPORTED := (.+)$", makefile, re.M).group(1).split() == supported_versions()
    found = subprocess.run(
        ["sh", str(REPO / "scripts" / "find_python.sh"), *supported_versions()], capture_output=True, text=True
    )
    version = subprocess.run(
        [found.stdout.strip(), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version in supported_versions()
    none = subprocess.run(["sh", str(REPO / "scripts" / "find_python.sh"), "2.1"], capture_output=True, text=True)
    assert none.stdout == ""  # nothing suitable: make then says so


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="needs the package index (pypi.org) to resolve wheels")
def test_every_supported_python_gets_wheels_for_every_pin():
    """Every package of each version's lock (requirements/py3.X.txt, for each version requires-python admits) has a
    wheel for it on Linux x86-64 with a locked hash, and the few published only as source build pure-Python wheels
    (scripts/check_python_versions.py); fails naming the version and the package."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_python_versions.py"), *supported_versions()],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("ok   Python") == len(supported_versions()), proc.stdout
