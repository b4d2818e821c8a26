"""DVC round trip on a reduced pocket config, in temporary git clones of this repository, with the commands of
docs/dvc_and_slurm.md (tests/doc_commands.py reads them; example paths become temporary ones).

`snakemake` and `dvc repro` leave `git status` clean but for `dvc.lock`; `dvc repro` gives the report
`snakemake` gives; a second `dvc repro` does nothing; `dvc push` to a local-directory remote and `make pull`
(or its three commands) in a fresh clone restore data, splits, feature banks, trained prompts and metrics bit
for bit, after which Snakemake has nothing to do. The remote examples (S3, SSH, Google Drive, a remote of
one's own) are run for their configuration: credentials land in the git-ignored `.dvc/config.local`.
"""

import hashlib
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_ENV
from doc_commands import blocks, commands, unmarked_blocks

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "tiny"
BIN = Path(sys.executable).parent
VENV = BIN.parent
# DVC's stage commands call `snakemake`, the rules `python -m vlprompt`: the test's environment on PATH
ENV = TEST_ENV
DVC = [sys.executable, "-m", "dvc"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# what DVC versions (relative to a clone), compared file by file after the pull
TRACKED = [
    "data",
    "results/splits",
    "results/features",
    f"results/{EXPERIMENT}/runs",
    f"results/{EXPERIMENT}/summary.csv",
    f"results/{EXPERIMENT}/stats.csv",
    f"results/{EXPERIMENT}/metrics.json",
    f"reports/{EXPERIMENT}",
]


def run(cmd, cwd, check=True, env=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def shell(line: str, cwd: Path, check=True, env=None):
    """A command line of the docs, as a user's shell runs it."""
    return run(["bash", "-c", line], cwd, check, env)


def porcelain(path: Path) -> str:
    return run(["git", "status", "--porcelain"], path).stdout.strip()


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


def test_every_command_block_of_the_docs_names_the_test_that_runs_it():
    assert unmarked_blocks() == []
    named = blocks()
    assert {"commands", "make_pull", "pull_steps", "running", "local_cluster"} <= set(named)
    for name, (path, lines) in named.items():
        assert lines, name
        text = (REPO / path).read_text()  # the block's name, passed to commands() there
        assert f'"{name}"' in text and "commands(" in text, f"{path} does not run the docs' block {name!r}"


def test_make_pull_runs_the_commands_the_docs_list():
    prerequisites, *recipe = (REPO / "Makefile").read_text().split("\npull:", 1)[1].split("\n\n")[0].splitlines()
    assert prerequisites.split() == ["install"]  # make pull installs first, as the docs say
    assert [line.strip().split(" ||")[0] for line in recipe] == [
        "$(BIN)/" + line + {"dvc status": " --quiet", "snakemake": " --quiet"}.get(line.split(" -")[0], "")
        for line in commands("pull_steps")
    ]


@pytest.fixture(scope="module")
def clones(tmp_path_factory, tiny_clone):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the project (the test works in clones of it)")
    if (
        not (REPO / "dvc.yaml").exists()
        or run(["git", "ls-files", "--error-unmatch", "dvc.yaml"], REPO, check=False).returncode
    ):
        pytest.skip("dvc.yaml is not committed: the test clones the repository's last commit")
    tmp = tmp_path_factory.mktemp("dvc")
    # the project at its last commit, with the reduced config as the experiment's config ("origin"), and a clone
    # of it run by `snakemake` (conftest's tiny_clone, shared with tests/test_isolation.py)
    origin, reference = tiny_clone["origin"], tiny_clone["run"]
    out = {"after snakemake": porcelain(reference)}

    # the docs' directory remote (committed to .dvc/config, so clones use it), then the docs' commands
    work = clone(origin, tmp / "work")
    remote = tmp / "remote"
    for line in commands("remote_directory", {"/mnt/shared/vlprompt-dvc": str(remote)}):
        shell(line, work)
    first, *rest = commands("commands")
    assert first == "dvc repro"
    out["first"] = shell(first, work)
    out["after dvc repro"] = porcelain(work)
    out["second"] = shell(first, work)
    for line in rest:
        out[line] = shell(line, work)

    # a fresh clone, `make pull` (its install step is done: the test runs in the project's environment)
    (tmp / "pull").mkdir()
    clone_line, make_line = commands("make_pull", {"https://example.org/vlprompt.git": str(work)})
    shell(clone_line, tmp / "pull")
    fresh = tmp / "pull" / "vlprompt"
    # the Makefile's install stamp (pyproject.toml and the lock of this Python): `make pull` must not reinstall the
    # environment the test runs in (that would point its editable install at this temporary clone)
    lock = f"requirements/py{sys.version_info.major}.{sys.version_info.minor}.txt"
    stamp = VENV / f".installed-{shell(f'cat pyproject.toml {lock} | cksum', fresh).stdout.split()[0]}"
    out["make pull"] = shell(f"{make_line} VENV={VENV} -o {stamp}", fresh)

    # another fresh clone, the three commands of `make pull` by hand
    by_hand = clone(work, tmp / "by_hand")
    out["pull steps"] = [shell(line, by_hand) for line in commands("pull_steps")]

    # a config key changed since the commit: what `dvc params diff` is for
    edited = clone(work, tmp / "edited")
    config = edited / "config" / "config.yaml"
    config.write_text(config.read_text().replace("bootstrap_resamples: 200", "bootstrap_resamples: 300"))
    out["params diff after an edit"] = shell("dvc params diff HEAD~1", edited)
    return {"reference": reference, "work": work, "fresh": fresh, "by_hand": by_hand, "remote": remote, **out}


@pytest.mark.slow
def test_git_status_is_clean_after_snakemake_and_shows_only_the_lock_after_dvc_repro(clones):
    assert clones["after snakemake"] == ""
    assert clones["after dvc repro"] == "?? dvc.lock"  # the one file to commit: what the results are


@pytest.mark.slow
def test_repro_gives_the_report_snakemake_gives(clones):
    ref, work = clones["reference"], clones["work"]
    assert "Running stage 'train'" in clones["first"].stdout
    for rel in [f"results/{EXPERIMENT}/summary.csv", f"results/{EXPERIMENT}/stats.csv"]:
        assert (work / rel).read_bytes() == (ref / rel).read_bytes(), rel
    # the report also records the commit it was made at: the work clone has one more (the DVC remote)
    lines = [(p / "reports" / EXPERIMENT / "report.md").read_text().splitlines() for p in (work, ref)]
    assert [[line for line in r if "| git commit " not in line] for r in lines] == [
        [line for line in lines[1] if "| git commit " not in line]
    ] * 2
    assert "coop" in (work / "reports" / EXPERIMENT / "report.md").read_text()


@pytest.mark.slow
def test_second_repro_does_nothing(clones):
    out = clones["second"].stdout
    assert "Running stage" not in out, out
    assert "Data and pipelines are up to date" in out, out
    status = run(DVC + ["status"], clones["work"])
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


@pytest.mark.slow
def test_metrics_params_and_plots_show(clones):
    shown = clones["dvc metrics show"].stdout
    assert "coop" in shown and "base_acc" in shown, shown
    diff = clones["dvc metrics diff HEAD~1"].stdout
    assert "coop" in diff and "base_acc" in diff, diff
    assert clones["dvc params diff HEAD~1"].stdout == ""  # the config is the one of that commit
    edited = clones["params diff after an edit"].stdout
    assert "stats.bootstrap_resamples" in edited and "200" in edited and "300" in edited, edited
    html = (clones["work"] / "dvc_plots" / "index.html").read_text()
    assert "summary.csv" in html and ".png" in html
    assert "/curves/" in html and "seed1.csv" in html  # each trained run's training curve


@pytest.mark.slow
def test_only_the_lock_and_the_remote_are_committed(clones):
    work = clones["work"]
    assert porcelain(work) == ""  # dvc_plots/ and everything the run wrote are ignored
    committed = run(["git", "show", "--name-only", "--format=", "HEAD"], work).stdout.split()
    assert committed == ["dvc.lock"]
    assert str(clones["remote"]) in (work / ".dvc" / "config").read_text()
    for out in ["data", "results/features", f"results/{EXPERIMENT}/runs", f"reports/{EXPERIMENT}", "dvc_plots"]:
        assert run(["git", "check-ignore", "-q", out], work, check=False).returncode == 0, out


@pytest.mark.slow
@pytest.mark.parametrize("clone_name", ["fresh", "by_hand"])
def test_pull_restores_everything_bit_for_bit(clones, clone_name):
    assert any(clones["remote"].rglob("*")), "nothing was pushed"
    assert digests(clones[clone_name]) == digests(clones["work"])
    for model in (clones[clone_name] / "results" / EXPERIMENT / "runs").rglob("model.pt"):
        assert model.stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("clone_name", ["fresh", "by_hand"])
def test_nothing_to_do_after_pull(clones, clone_name):
    fresh = clones[clone_name]
    dry = run(SNAKEMAKE + ["-n"], fresh)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    assert "Data and pipelines are up to date" in run(DVC + ["status"], fresh).stdout
    assert porcelain(fresh) == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, url, local_keys, shared_keys",
    [
        ("remote_s3", "s3://my-bucket/vlprompt", ["profile", "access_key_id", "secret_access_key"], ["endpointurl"]),
        ("remote_ssh", "ssh://login.cluster.example.org/", ["user", "keyfile", "ask_password"], []),
        ("remote_gdrive", "gdrive://", ["gdrive_use_service_account", "gdrive_service_account_json_file_path"], []),
    ],
)
def test_remote_examples_keep_credentials_out_of_the_committed_config(tmp_path, name, url, local_keys, shared_keys):
    repo = clone(REPO, tmp_path / "repo")
    for line in commands(name):
        shell(line, repo)
    shared = (repo / ".dvc" / "config").read_text()
    local = (repo / ".dvc" / "config.local").read_text()
    assert url in shared and "remote = storage" in shared
    assert all(f"{k} = " in local and f"{k} = " not in shared for k in local_keys), (shared, local)
    assert all(f"{k} = " in shared for k in shared_keys), shared
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], repo, check=False).returncode == 0


@pytest.mark.slow
def test_a_remote_of_ones_own(tmp_path):
    repo = clone(REPO, tmp_path / "repo")
    add, listed, config = [
        shell(line, repo) for line in commands("remote_local", {"/scratch/me/dvc": str(tmp_path / "dvc")})
    ]
    assert "mine" in listed.stdout and str(tmp_path / "dvc") in listed.stdout
    assert ".dvc/config.local\tremote.mine.url" in config.stdout and porcelain(repo) == ""


# docs/dvc_s3.md: an S3 bucket as the remote, checked against moto's S3 server on loopback
S3_DOC = REPO / "docs" / "dvc_s3.md"
# what the page's example keys become: any key works with the local server; made here, so that no file of the
# repository holds them and finding one in a committed file means the test's run wrote it there
S3_KEYS = {"mykeyid": f"TESTKEY{secrets.token_hex(6).upper()}", "mysecret": secrets.token_hex(20)}


def s3_commands(name: str, replace: dict[str, str] | None = None) -> str:
    """The block ``name`` of docs/dvc_s3.md as one shell line (its exports reach the commands after them)."""
    lines = blocks(S3_DOC)[name][1]
    for old, new in {**S3_KEYS, **(replace or {})}.items():
        lines = [line.replace(old, new) for line in lines]
    return " && ".join(lines)


def test_s3_bucket_remote_keeps_the_keys_out_of_the_committed_config(tmp_path):
    repo = clone(REPO, tmp_path / "repo")
    shell(s3_commands("s3_bucket_remote"), repo)
    shared, local = (repo / ".dvc" / "config").read_text(), (repo / ".dvc" / "config.local").read_text()
    assert "url = s3://my-bucket/vlprompt" in shared and "remote = s3store" in shared, shared
    assert all(k not in shared and k in local for k in ("access_key_id", "secret_access_key")), (shared, local)
    assert run(["git", "show", "--name-only", "--format=", "HEAD"], repo).stdout.split() == [".dvc/config"]


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on 127.0.0.1 at a free port, and an environment whose only credentials are the test's keys."""
    pytest.importorskip("boto3", reason="needs boto3 (from moto[server], the test extra) for the local S3 server")
    pytest.importorskip("dvc_s3", reason="needs dvc-s3 (the test extra): DVC's S3 remote")
    server_module = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),  # no profile of the machine's user is read
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        yield port, env
    finally:
        server.stop()


@pytest.mark.slow
def test_push_to_and_pull_from_an_s3_compatible_server(clones, s3_server, tmp_path):
    import boto3

    port, env = s3_server
    endpoint = {"5555": str(port)}
    # a copy of the clone that ran the pipeline (its DVC cache holds the outputs), the S3 remote committed
    work = tmp_path / "work"
    shutil.copytree(clones["work"], work, symlinks=True)
    shell(s3_commands("s3_local_server", endpoint), work, env=env)
    shell('git add .dvc/config && git commit --quiet -m "DVC remote: S3"', work, env=env)
    shell(s3_commands("s3_push"), work, env=env)

    for key in S3_KEYS.values():  # in no committed file (git grep searches the tracked files as they are now)
        assert run(["git", "grep", "-q", key], work, check=False, env=env).returncode == 1, key
    shared = (work / ".dvc" / "config").read_text()
    assert f"endpointurl = http://127.0.0.1:{port}" in shared and "access_key" not in shared, shared
    assert not (work / ".dvc" / "config.local").exists()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=S3_KEYS["mykeyid"],
        aws_secret_access_key=S3_KEYS["mysecret"],
        region_name="us-east-1",
    )
    stored = client.list_objects_v2(Bucket="vlprompt", Prefix="dvc/")
    assert stored.get("KeyCount", 0) > 0, "nothing was pushed to the bucket"

    (tmp_path / "pull").mkdir()
    shell(s3_commands("s3_pull", {"https://example.org/vlprompt.git": str(work)}), tmp_path / "pull", env=env)
    fresh = tmp_path / "pull" / "vlprompt"
    assert digests(fresh) == digests(clones["work"])
