"""A training job killed in the middle resumes from its checkpoint and ends with exactly the metrics of
an uninterrupted run; a finished job's outputs are complete (written atomically)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import prepare_run_inputs
from vlprompt.cli import main as cli


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="mini",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["zeroshot", "coop"],
        method_overrides={"coop": {"epochs": 8, "batch_size": 16}},
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 2}
    cfg["features"]["train_views"] = 2
    cfg["train"]["checkpoint_every"] = 2
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=2)
    return root, path


def train(path, out, *extra):
    return cli(
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
            *extra,
        ]
    )


def strip(metrics):
    return {k: v for k, v in metrics.items() if k not in ("seconds", "provenance")}


def test_interrupted_run_resumes_to_identical_metrics(mini):
    root, path = mini
    assert train(path, root / "full") == 0
    full = json.loads((root / "full" / "metrics.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        train(path, root / "killed", "--stop-after", "5")
    assert (root / "killed" / "checkpoint.pt").exists()
    assert not (root / "killed" / "metrics.json").exists()  # no output that looks complete
    assert train(path, root / "killed") == 0
    resumed = json.loads((root / "killed" / "metrics.json").read_text())
    assert strip(resumed) == strip(full)
    assert not (root / "killed" / "checkpoint.pt").exists()


def test_sigkilled_process_leaves_no_half_written_outputs(mini):
    root, path = mini
    out = root / "sigkill"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vlprompt",
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
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "metrics.json").exists()
    assert train(path, out) == 0
    assert strip(json.loads((out / "metrics.json").read_text())) == strip(
        json.loads((root / "full" / "metrics.json").read_text())
    )
