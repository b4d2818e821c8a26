"""DVC round trip on a reduced pocket config, in temporary git clones of this repository.

`dvc repro` gives the report `snakemake` gives; a second `dvc repro` does nothing; `dvc push` to a
local-directory remote and `dvc pull` into a fresh clone restore data, splits, feature banks, trained
prompts and metrics bit for bit; after the pull (and `snakemake --touch --forceall`, which gives the pulled
files consistent times) Snakemake has nothing to do.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pocket_tiny.yaml"
EXPERIMENT = "tiny"
BIN = Path(sys.executable).parent
# DVC's stage commands call `snakemake`, the rules `python -m vlprompt`: the test's environment on PATH
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "vlprompt-test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "vlprompt-test", "GIT_COMMITTER_EMAIL": "test@localhost",
    "DVC_NO_ANALYTICS": "1",
}
ENV.pop("SNAKEMAKE_PROFILE", None)
DVC = [sys.executable, "-m", "dvc"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# what DVC versions (relative to a clone), compared file by file after the pull
TRACKED = ["data", "results/splits", "results/features", f"results/{EXPERIMENT}/runs",
           f"results/{EXPERIMENT}/summary.csv", f"results/{EXPERIMENT}/stats.csv",
           f"results/{EXPERIMENT}/metrics.json"]


def run(cmd, cwd, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def clone(src: Path, dst: Path) -> Path:
    run(["git", "clone", "--quiet", src, dst], cwd=dst.parent)
    return dst


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the DVC-tracked paths, by path relative to root."""
    out = {}
    for rel in TRACKED:
        path = root / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        assert files, f"nothing at {path}"
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the project (the test works in clones of it)")
    if not (REPO / "dvc.yaml").exists() or run(["git", "ls-files", "--error-unmatch", "dvc.yaml"], REPO,
                                               check=False).returncode:
        pytest.skip("dvc.yaml is not committed: the test clones the repository's last commit")
    tmp = tmp_path_factory.mktemp("dvc")
    # the project at its last commit, with the reduced config as the experiment's config
    origin = clone(REPO, tmp / "origin")
    shutil.copy(TINY, origin / "config" / "config.yaml")
    run(["git", "commit", "--quiet", "-am", "test: tiny pocket config"], origin)

    reference = clone(origin, tmp / "snakemake")
    run(SNAKEMAKE + ["--cores", "2", "--quiet"], reference)

    work = clone(origin, tmp / "work")
    first = run(DVC + ["repro"], work)
    second = run(DVC + ["repro"], work)
    # what a user commits after a run: the lock file, the ignore entries DVC wrote, metrics and report
    run(["git", "add", "-A"], work)
    run(["git", "commit", "--quiet", "-m", "test: dvc repro"], work)
    remote = tmp / "remote"
    run(DVC + ["remote", "add", "--local", "-d", "test", remote], work)
    run(DVC + ["push"], work)

    fresh = clone(work, tmp / "fresh")
    run(DVC + ["remote", "add", "--local", "-d", "test", remote], fresh)
    pulled = run(DVC + ["pull"], fresh)
    run(SNAKEMAKE + ["--cores", "1", "--touch", "--forceall", "--quiet"], fresh)
    return {"reference": reference, "work": work, "fresh": fresh, "first": first, "second": second,
            "pulled": pulled, "remote": remote}


@pytest.mark.slow
def test_repro_gives_the_report_snakemake_gives(clones):
    ref, work = clones["reference"], clones["work"]
    assert "Running stage 'train'" in clones["first"].stdout
    for rel in [f"results/{EXPERIMENT}/summary.csv", f"results/{EXPERIMENT}/stats.csv",
                f"reports/{EXPERIMENT}/report.md"]:
        assert (work / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert "coop" in (work / "reports" / EXPERIMENT / "report.md").read_text()


@pytest.mark.slow
def test_second_repro_does_nothing(clones):
    out = clones["second"].stdout
    assert "Running stage" not in out, out
    assert "Data and pipelines are up to date" in out, out
    status = run(DVC + ["status"], clones["work"])
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


@pytest.mark.slow
def test_metrics_and_plots_show(clones, tmp_path):
    work = clones["work"]
    shown = run(DVC + ["metrics", "show", "--json"], work).stdout
    assert "coop" in shown and "base_acc" in shown, shown
    run(DVC + ["plots", "show", "--out", tmp_path / "plots"], work)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "summary.csv" in html and ".png" in html


@pytest.mark.slow
def test_dvc_outputs_are_not_in_git_ignored_folders(clones):
    work = clones["work"]
    assert run(["git", "status", "--porcelain"], work).stdout.strip() == ""  # nothing left uncommitted
    tracked = run(["git", "ls-files"], work).stdout.split()
    assert {"dvc.lock", "results/.gitignore", f"results/{EXPERIMENT}/.gitignore",
            f"results/{EXPERIMENT}/metrics.json", f"reports/{EXPERIMENT}/report.md"} <= set(tracked)
    for folder in ["results", f"results/{EXPERIMENT}"]:
        # the folders holding DVC's outputs and ignore files are not ignored (check-ignore exits 1)
        assert run(["git", "check-ignore", "-q", folder + "/"], work, check=False).returncode == 1, folder
    for out in ["data", "results/features", f"results/{EXPERIMENT}/runs"]:
        assert run(["git", "check-ignore", "-q", out], work, check=False).returncode == 0, out


@pytest.mark.slow
def test_pull_restores_everything_bit_for_bit(clones):
    assert any(clones["remote"].rglob("*")), "nothing was pushed"
    assert digests(clones["fresh"]) == digests(clones["work"])
    for model in (clones["fresh"] / "results" / EXPERIMENT / "runs").rglob("model.pt"):
        assert model.stat().st_size > 0


@pytest.mark.slow
def test_nothing_to_do_after_pull(clones):
    fresh = clones["fresh"]
    dry = run(SNAKEMAKE + ["-n"], fresh)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    assert "Data and pipelines are up to date" in run(DVC + ["status"], fresh).stdout
    assert run(["git", "status", "--porcelain"], fresh).stdout.strip() == ""
