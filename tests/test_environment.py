"""The environment and its lock (docs/environments.md): one hashed lock per supported Python, in step with
pyproject.toml and resolved from wheels; the conda environment and the container recipes install that lock;
every run records the lock's sha256, the Python version and whether the environment matched, and the report flags
runs that did not."""

import functools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vlprompt import io as vio
from vlprompt.analysis.aggregate import summary_table
from vlprompt.analysis.report.render import _provenance_section
from vlprompt.cli import main

REPO = Path(__file__).resolve().parents[1]
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"  # the Python running the tests (.venv's)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^;\s]+)(?:;(.+))?$")


def supported_versions() -> list[str]:
    """The minor versions pyproject.toml's requires-python admits (">=3.A,<3.B")."""
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec.replace(" ", "")).groups()
    return [f"3.{m}" for m in range(int(low), int(high))]


def lock_of(version: str) -> Path:
    return REPO / "requirements" / f"py{version}.txt"


def direct_pins(pyproject_text: str, python: str = "3.11") -> dict[str, str]:
    """``{canonical name: version}`` of pyproject's dependencies and extras for Python ``python`` (`make lock`
    locks them all); every one is an exact pin, optionally with an environment marker (``; python_version < ...``)."""
    from packaging.markers import Marker

    project = tomllib.loads(pyproject_text)["project"]
    out = {}
    extras = [spec for group in project.get("optional-dependencies", {}).values() for spec in group]
    for spec in project["dependencies"] + extras:
        m = PIN.match(spec.replace(" ", ""))
        assert m, f"pyproject.toml: {spec!r} is not an exact pin (name==version)"
        if m.group(3) and not Marker(spec.split(";", 1)[1]).evaluate({"python_version": python}):
            continue
        out[vio.canonical_name(m.group(1))] = m.group(2)
    return out


def lock_entries(lock_text: str) -> dict[str, tuple[str, bool]]:
    """``{canonical name: (version, whether pyproject.toml asks for it)}`` from uv's annotated lock."""
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if m:
            out[vio.canonical_name(m.group(1))] = (m.group(2), "vlprompt (pyproject.toml)" in block)
    return out


def lock_drift(pyproject_text: str, lock_text: str, python: str = "3.11") -> list[str]:
    """What a re-lock (`make lock`) would change about the direct dependencies: a pin of pyproject.toml that the
    lock has at another version or not at all, and a package the lock holds for pyproject.toml that it no longer
    asks for."""
    pins, locked = direct_pins(pyproject_text, python), lock_entries(lock_text)
    out = []
    for name, version in sorted(pins.items()):
        if name not in locked:
            out.append(f"{name}=={version} in pyproject.toml, not in the lock")
        elif locked[name][0] != version:
            out.append(f"{name}=={version} in pyproject.toml, {locked[name][0]} in the lock")
        elif not locked[name][1]:
            out.append(f"{name}=={version} in pyproject.toml, in the lock only as another package's dependency")
    out += [
        f"{name} locked for pyproject.toml, which no longer names it"
        for name, (_, direct) in sorted(locked.items())
        if direct and name not in pins
    ]
    return out


# --- the locks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", supported_versions())
def test_each_lock_is_in_step_with_pyproject(version):
    assert lock_drift((REPO / "pyproject.toml").read_text(), lock_of(version).read_text(), version) == [], (
        f"{lock_of(version).name} is out of step with pyproject.toml: run make lock"
    )


def test_a_changed_added_or_dropped_pin_without_a_relock_is_caught():
    pyproject, lock = (REPO / "pyproject.toml").read_text(), lock_of("3.11").read_text()
    assert '"torch==2.14.1"' in pyproject and '"tabulate==0.10.0",' in pyproject
    changed = pyproject.replace('"torch==2.14.1"', '"torch==2.14.0"')
    assert lock_drift(changed, lock) == ["torch==2.14.0 in pyproject.toml, 2.14.1 in the lock"]
    added = pyproject.replace('"tabulate==0.10.0",', '"tabulate==0.10.0",\n    "rich-click==1.9.0",')
    assert lock_drift(added, lock) == ["rich-click==1.9.0 in pyproject.toml, not in the lock"]
    dropped = pyproject.replace('"tabulate==0.10.0",', "")
    assert lock_drift(dropped, lock) == ["tabulate locked for pyproject.toml, which no longer names it"]
    # a transitive dependency pinned directly at its locked version: the lock does not know pyproject asks for it
    filelock = lock_entries(lock)["filelock"][0]
    pinned = pyproject.replace('"tabulate==0.10.0",', f'"tabulate==0.10.0", "filelock=={filelock}",')
    assert lock_drift(pinned, lock) == [
        f"filelock=={filelock} in pyproject.toml, in the lock only as another package's dependency"
    ]


@functools.cache
def _make_lock_arguments() -> list[str]:
    """The uv arguments `make lock` runs, from `make -n` (the Makefile's variables expanded), for Python "$v"."""
    dry = subprocess.run(["make", "-n", "-B", "lock"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = next(line for line in dry.replace("\\\n", " ").splitlines() if "pip compile" in line)
    command = command[command.index("pip compile") : command.index("|| exit")]
    return [a for a in shlex.split(command) if a != "--quiet"]  # uv leaves --quiet out of the header


@pytest.mark.parametrize("version", supported_versions())
def test_each_lock_was_written_by_make_lock_from_wheels_only(version):
    """The header uv writes names the command: the same arguments as `make lock` (so the lock is for this Python
    and Linux x86-64, wheels only except the pure-Python source packages the Makefile lists, no pre-release), and
    every package has hashes. uv refuses to write a lock it cannot fill with wheels for that Python and platform, so
    this is the wheel check that needs no index; scripts/check_python_versions.py asks the index again."""
    text = lock_of(version).read_text()
    header = re.search(r"^#    uv (pip compile .*)$", text, re.M).group(1)
    expected = [a.replace("$v", version) for a in _make_lock_arguments()]
    assert shlex.split(header) == expected
    assert ["--python-version", version] == expected[expected.index("--python-version") :][:2]
    for flag in ("--generate-hashes", "--only-binary", "--prerelease"):
        assert flag in expected
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    pinned = [e for e in entries if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", e)]
    assert len(pinned) > 100
    assert all("--hash=sha256:" in e for e in pinned), "a locked package without a hash"
    assert not [e.split(" ")[0] for e in pinned if re.search(r"==\S*(a|b|rc|dev)\d", e.split(" ")[0])]


def test_the_makefile_installs_the_lock_of_its_python_with_hashes():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^LOCK\s+:= requirements/py\$\(PY_VERSION\)\.txt$", makefile, re.M)
    assert re.search(r"^\$\(STAMP\): pyproject.toml \$\(LOCK\)$", makefile, re.M)
    assert re.search(r"STAMP\s+:= .*cat pyproject.toml \$\(LOCK\)", makefile)
    assert "pip install --quiet --require-hashes -r $(LOCK)" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    dry = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True).stdout
    version = RUNNING
    assert f"--require-hashes -r requirements/py{version}.txt" in dry


def test_the_environment_make_install_built_is_its_lock():
    """In CI (`make test` on a fresh clone) .venv was installed from the lock: it must be that lock exactly."""
    lock = lock_of(RUNNING)
    cksum = subprocess.run(
        f"cat pyproject.toml {lock.relative_to(REPO)} | cksum", shell=True, cwd=REPO, capture_output=True, text=True
    ).stdout.split()[0]
    stamp = Path(sys.prefix) / f".installed-{cksum}"
    if not stamp.exists():
        pytest.skip(f"{sys.prefix} was not installed by `make install` from the current {lock.name}")
    env = vio.environment()
    assert env["lock"] == f"requirements/{lock.name}"
    assert env["matches_lock"], env["differences"]


# --- what the running environment says about itself --------------------------------------------------------------


@pytest.fixture
def lock_env(monkeypatch, tmp_path):
    """Point VLPROMPT_LOCK at a file and recompute the (cached) environment."""

    def use(text: str | None) -> dict:
        path = tmp_path / "py3.X.txt"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        monkeypatch.setenv(vio.LOCK_ENV, str(path))
        vio.environment.cache_clear()
        return vio.environment()

    yield use
    vio.environment.cache_clear()


def test_differences_name_the_package_and_both_versions():
    installed = {"numpy": "2.4.6", "torch": "2.14.1+cpu", "pyyaml": "6.0.3", "extra-tool": "1.0"}
    locked = vio.read_pins("numpy==2.4.6 \\\n    --hash=sha256:ab\nPyYAML==6.0.3\ntorch==2.14.1\nscipy==1.17.1 ; x\n")
    assert locked == {"numpy": "2.4.6", "pyyaml": "6.0.3", "torch": "2.14.1", "scipy": "1.17.1"}
    assert vio.lock_differences(locked, installed) == [
        "scipy not installed (locked 1.17.1)",
        "torch 2.14.1+cpu installed, 2.14.1 locked",  # another build of the same version is another environment
    ]
    assert vio.lock_differences({"numpy": "2.4.6", "pyyaml": "6.0.3"}, installed) == []


def test_installed_versions_are_the_ones_importlib_metadata_finds():
    """installed_versions reads the dist-info folders' names: for every locked package, the version metadata has."""
    from importlib import metadata

    expected = {}
    for dist in metadata.distributions():
        expected.setdefault(vio.canonical_name(dist.metadata["Name"]), dist.version)
    locked = vio.read_pins(lock_of(RUNNING).read_text())
    found = vio.installed_versions()
    assert {n: found.get(n) for n in locked} == {n: expected.get(n) for n in locked}
    assert sum(n in found for n in locked) > 100


def test_provenance_names_the_lock_its_sha256_and_python(lock_env):
    numpy = vio.installed_versions()["numpy"]
    env = lock_env(f"numpy=={numpy} \\\n    --hash=sha256:00\n")
    assert env["lock_sha256"] == vio.sha256_file(Path(env["lock"])) and env["matches_lock"] is True
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert vio.provenance(device="cpu")["environment"] == env
    env = lock_env("numpy==0.0.1\n")
    assert env["matches_lock"] is False and env["differences"] == [f"numpy {numpy} installed, 0.0.1 locked"]
    env = lock_env(None)  # a wheel install: no requirements/ next to the package and no VLPROMPT_LOCK
    assert env["lock"] == "no lock found" and env["lock_sha256"] is None and env["matches_lock"] is None


def test_the_repositorys_lock_is_found_for_the_running_python(monkeypatch):
    monkeypatch.delenv(vio.LOCK_ENV, raising=False)
    assert vio.lock_path() == lock_of(RUNNING)
    assert vio.lock_path("3.99") is None


def test_env_command_prints_the_summary_and_check_fails_on_a_difference(lock_env, capsys):
    lock_env("numpy==0.0.1\n")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^python\s+\d+\.\d+\.\d+ ", out, re.M) and re.search(r"^sha256\s+[0-9a-f]{64}$", out, re.M)
    assert "matches         NO: 1 package(s)" in out and "numpy" in out and "0.0.1 locked" in out
    with pytest.raises(SystemExit) as stop:
        main(["env", "--check"])
    assert stop.value.code == 1
    lock_env(None)
    assert main(["env", "--check"]) == 0
    assert "no lock found" in capsys.readouterr().out


# --- runs and the report --------------------------------------------------------------------------------------


def _run(tmp_path: Path, name: str, env: dict | None) -> Path:
    out = tmp_path / name / "metrics.json"
    out.parent.mkdir()
    prov = {"versions": {"python": "3.11.7"}, "backbone": "PocketCLIP-ViT-T8", "weights_sha256": "w"}
    if env is not None:
        prov["environment"] = env
    metrics = {"method": name, "protocol": "all", "dataset": "d", "shots": 1, "seed": 1, "all_acc": 50.0}
    out.write_text(json.dumps({**metrics, "provenance": prov}))
    return out


def test_the_report_flags_runs_made_outside_their_lock(tmp_path):
    same = {"python": "3.12.1", "lock_sha256": "a" * 64, "matches_lock": True}
    files = [
        _run(tmp_path, "coop", same),
        _run(tmp_path, "kgcoop", {**same, "matches_lock": False}),
        _run(tmp_path, "maple", None),  # recorded before environments were
    ]
    summary = summary_table({"shots": [1], "seeds": [1]}, files)
    assert summary.set_index("method").env_matches_lock.to_dict() == {"coop": True, "kgcoop": False, "maple": None}
    assert summary.python.tolist() == ["3.12.1", "3.12.1", "3.11.7"]
    summary_csv = tmp_path / "summary.csv"
    summary.to_csv(summary_csv, index=False)  # the report reads it back from the file
    md = "\n".join(_provenance_section(pd.read_csv(summary_csv), "all", "b", {}).md)
    assert "1 of 3 runs were made in an environment that differs from its lock (kgcoop on d)" in md
    assert "1 of 3 runs recorded no lock" in md
    assert re.search(rf"\| runs: lock sha256 +\| {'a' * 64} ", md)
    assert re.search(r"\| runs: python +\| 3.11.7, 3.12.1 ", md) and re.search(r"\| report environment +\| ", md)
    clean = _provenance_section(pd.read_csv(summary_csv).iloc[:1], "all", "b", {})
    assert "differs from its lock" not in "\n".join(clean.md)


# --- the conda environment and the containers install the same lock -------------------------------------------


def test_the_conda_environment_installs_the_lock_and_nothing_else():
    path = REPO / "workflow" / "envs" / "vlprompt.yaml"
    env = yaml.safe_load(path.read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = lock_of(python.removeprefix("python="))
    assert pip == ["--require-hashes", f"-r ../../requirements/{lock.name}"]
    # pip reads the path from the environment file's folder: here, and Snakemake's copy in .snakemake/conda/
    assert (path.parent / "../../requirements" / lock.name).resolve() == lock
    # Snakemake keys an environment by this file's text: the lock's hash in it rebuilds the environment on a re-lock
    assert f"# lock sha256: {vio.sha256_file(lock)}" in path.read_text()


def definition_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """An Apptainer definition file: its header (``Key: value``) and its ``%section`` bodies."""
    header_text, *rest = re.split(r"^(%\w+)[^\n]*\n", text, flags=re.M)
    header = dict(line.split(":", 1) for line in header_text.splitlines() if line.strip() and not line.startswith("#"))
    sections = dict(zip(rest[::2], rest[1::2], strict=True))
    return {k.strip(): v.strip() for k, v in header.items()}, sections


def test_the_apptainer_recipe_installs_the_lock_with_hashes_and_the_project():
    header, sections = definition_sections((REPO / "containers" / "vlprompt.def").read_text())
    assert header["Bootstrap"] == "docker"
    python = re.fullmatch(r"python:(3\.\d+)-slim-\w+", header["From"]).group(1)
    assert python in supported_versions()
    lock = f"requirements/py{python}.txt"
    copied = [line.split()[0] for line in sections["%files"].splitlines() if line.strip()]
    assert lock in copied or "requirements" in copied
    for src in copied:  # every path it copies exists (apptainer build runs from the repository root)
        assert (REPO / src).exists(), src
    post = sections["%post"].replace("\\\n", " ")
    assert re.search(rf"pip install [^\n]*--require-hashes -r /opt/vlprompt/{re.escape(lock)}", post)
    assert re.search(r"pip install [^\n]*--no-deps -e /opt/vlprompt", post)
    pip = re.search(r"^PIP_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"pip install --no-cache-dir pip=={pip}" in post  # the pip `make install` uses
    assert "python -m vlprompt env --check" in sections["%test"]
    assert "%runscript" in sections and "%environment" in sections


def test_the_dockerfile_installs_the_same_lock_as_the_apptainer_recipe():
    text = (REPO / "containers" / "Dockerfile").read_text().replace("\\\n", " ")
    header, _ = definition_sections((REPO / "containers" / "vlprompt.def").read_text())
    assert re.search(r"^FROM (\S+)", text, re.M).group(1) == header["From"]
    python = header["From"].split(":")[1].split("-")[0]
    assert re.search(rf"pip install [^\n]*--require-hashes -r /opt/vlprompt/requirements/py{python}\.txt", text)
    assert re.search(r"pip install [^\n]*--no-deps -e /opt/vlprompt", text)


def test_jobs_get_the_checkouts_source_first_and_the_configured_image(tmp_path):
    import os

    from vlprompt.pipeline.workflow import container_image, source_first

    (tmp_path / "src").mkdir()
    src = str(tmp_path / "src")
    assert source_first(tmp_path, {}) == {"PYTHONPATH": src}
    assert source_first(tmp_path, {"PYTHONPATH": "/x"}) == {"PYTHONPATH": f"{src}{os.pathsep}/x"}
    assert source_first(tmp_path, {"PYTHONPATH": f"/x{os.pathsep}{src}"}) == {}  # already there
    assert source_first(tmp_path / "no-checkout", {}) == {}
    assert container_image({}) == "containers/vlprompt.sif"
    assert container_image({"VLPROMPT_CONTAINER": "docker://r/v@sha256:0"}) == "docker://r/v@sha256:0"


STUB_APPTAINER = """#!/bin/bash
# stands in for apptainer: records how Snakemake calls it, then runs the job's command on this machine
if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi
printf '%s\\n' "$*" >> "$STUB_LOG"
echo "PYTHONPATH=$PYTHONPATH" >> "$STUB_LOG"
while [ $# -gt 0 ] && [ "$1" != "-c" ]; do shift; done
exec bash -c "$2"
"""


@pytest.mark.slow
def test_snakemake_runs_each_job_in_the_image_with_the_checkouts_code(tmp_path):
    """`--sdm apptainer`: Snakemake calls `apptainer exec` on the image $VLPROMPT_CONTAINER names (the Snakefile's
    container directive), with the job's command and this checkout's src/ first on PYTHONPATH. A stub apptainer
    records the call and runs the command here (no container runtime on this machine)."""
    import os

    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(STUB_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    image = tmp_path / "vlprompt.sif"
    image.write_bytes(b"")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(experiment="container", datasets=["pocket_noisy"], shots=[2])  # shots the 4 images per class allow
    cfg["pocket"]["per_class"] = {"train": 4, "val": 2, "test": 2}
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "VLPROMPT_CONTAINER": str(image),
    }
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work)]
    proc = subprocess.run(
        [*snakemake, "--cores", "1", "--sdm", "apptainer", "--apptainer-args=--nv", "--until", "prepare_dataset"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    call, pythonpath = (tmp_path / "calls.log").read_text().splitlines()[:2]
    assert re.search(rf"exec --home '?{re.escape(str(work))}'? .*--nv .*{re.escape(str(image))} bash -c ", call)
    assert "python -m vlprompt prepare --dataset pocket_noisy" in call
    assert str(REPO / "src") in pythonpath.removeprefix("PYTHONPATH=").split(os.pathsep)  # source_first's doing
    assert list((work / "data").glob("pocket_noisy-*/split_zhou_pocket_noisy.json"))
