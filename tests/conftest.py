"""Fixtures and helpers every test module may use, and how the suite is spread over pytest-xdist's workers.

docs/testing.md describes the tiers (`make test`, `make test-fast`), the markers and the xdist groups. In short:

- `make test` runs `pytest -n 2 --dist loadgroup`: two worker processes. Tests of one group run one after the
  other in one worker. A test that uses a module-scoped fixture (an end-to-end DAG run, a clone, a cluster) is put
  in the group of its module here, so the fixture is built once; `@pytest.mark.xdist_group("name")` puts tests
  (of any module) in one group by hand, e.g. tests that must never run at the same time as each other.
- The artefacts several modules need (a finished run of the tiny pocket config, a fresh clone run by Snakemake)
  are built once per test run, whichever worker asks first, under a file lock (`build_once`); a test that changes
  one works on a copy (`copy_tree`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock  # torch's own dependency

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pocket_tiny.yaml"

# The long poles, started first so that the last minutes are not one worker running one long group alone:
# the SLURM runs (mostly waiting on the scheduler), then the longest end-to-end groups (measured: docs/testing.md).
# Any other group follows in collection order.
RUN_FIRST = ("test_slurm", "test_isolation", "test_dvc", "test_real_size", "test_e2e")


# --- xdist groups and order ---------------------------------------------------------------------------------


def _module_name(item: pytest.Item) -> str:
    return Path(item.nodeid.split("::")[0]).stem


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope in ("module", "class") for defs in info.name2fixturedefs.values())


def _set_group_in_nodeid(item: pytest.Item) -> None:
    """What pytest-xdist 3.8 does for --dist loadgroup (the node id gets "@<group>", which its scheduler reads),
    done here because it sets ``item._nodeid``, which pytest 9 no longer reads (the id is ``item._id``)."""
    from _pytest.nodeid import NodeId

    names = sorted(
        {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    )
    if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
        item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None and _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(_module_name(item)))
    if not hasattr(config, "workerinput"):
        return
    # an xdist worker: every worker sorts the same collection the same way
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(_module_name(item), len(rank)), order[id(item)]))
    if config.getvalue("loadgroup"):
        for item in items:
            _set_group_in_nodeid(item)


# --- artefacts built once per test run ----------------------------------------------------------------------


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this test run that every xdist worker sees (the parent of the workers' own basetemps)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``shared_root()/name``, built by ``build(folder)`` the first time any worker of this test run asks for it.

    The first caller builds under a file lock while the others wait; a build that fails leaves no folder
    behind (the next caller tries again and fails with the same message). Treat the result as read-only:
    copy it (``copy_tree``) where a test changes files."""
    folder = shared_root(tmp_path_factory) / name
    done = folder.with_name(name + ".done")
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of a shared artefact for a test to change (symbolic links copied as links)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- the environment of the end-to-end tests ----------------------------------------------------------------

# The rules call `python -m vlprompt` and the DVC stages `snakemake`: the test's interpreter first on PATH; commits
# in temporary clones need an author; no profile or config of the caller's shell leaks in.
TEST_ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "GIT_AUTHOR_NAME": "vlprompt-test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "vlprompt-test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
    "DVC_NO_ANALYTICS": "1",
}
TEST_ENV.pop("SNAKEMAKE_PROFILE", None)
TEST_ENV.pop("VLPROMPT_CONFIG", None)


def _run(cmd: list, cwd: Path) -> None:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=TEST_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def tiny_config(**changes) -> dict:
    """tests/configs/pocket_tiny.yaml (one dataset, 2 shots, zero-shot and a 3-epoch CoOp) with top-level keys
    replaced."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory) -> Path:
    """A folder holding the whole DAG's outputs for the tiny pocket config with seeds 1 and 2 (its
    config/config.yaml, data/, results/, reports/, .snakemake/), run once per test run by `snakemake --cores 2`.
    Read-only: ``copy_tree(tiny_finished_run, tmp_path / "work")`` for a test that changes it."""

    def build(work: Path) -> None:
        (work / "config").mkdir()
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config(seeds=[1, 2])))
        _run([sys.executable, "-m", "snakemake", "-s", REPO / "Snakefile", "-d", work, "--cores", "2"], work)

    return build_once(tmp_path_factory, "tiny_finished_run", build)


@pytest.fixture(scope="session")
def tiny_clone(tmp_path_factory) -> dict[str, Path]:
    """A clone of this repository's last commit whose config/config.yaml is the tiny pocket config, committed
    ("origin"), and a fresh clone of that one in which `snakemake --cores 2` ran the whole DAG ("run"), built
    once per test run. Read-only: clone "origin" again, or copy "run", to change anything."""

    def build(root: Path) -> None:
        if shutil.which("git") is None or not (REPO / ".git").exists():
            pytest.skip("needs git and a git checkout of the project (the test works in clones of it)")
        _run(["git", "clone", "--quiet", REPO, root / "origin"], root)
        shutil.copy(TINY, root / "origin" / "config" / "config.yaml")
        _run(["git", "commit", "--quiet", "-am", "test: tiny pocket config"], root / "origin")
        _run(["git", "clone", "--quiet", root / "origin", root / "run"], root)
        _run([sys.executable, "-m", "snakemake", "--cores", "2", "--quiet"], root / "run")

    root = build_once(tmp_path_factory, "tiny_clone", build)
    return {"origin": root / "origin", "run": root / "run"}


@dataclass(frozen=True)
class Plan:
    """What `snakemake -n --quiet rules` printed for one shipped config in a fresh clone (``output``: stdout and
    stderr), its exit status, the config it resolved (results/<experiment>/config.json; None if not written) and
    the files it wrote or changed (relative to the clone; .git left out)."""

    returncode: int
    output: str
    resolved: dict | None
    written: list[str]


@pytest.fixture(scope="session")
def config_plans(tmp_path_factory) -> Callable[[str], Plan]:
    """``plan("config/base2novel.yaml")``: the dry run of a shipped config (a path relative to the repository) in
    a fresh clone of this repository's last commit (`snakemake -s Snakefile -d <clone> -n --quiet rules
    --configfile <clone>/config/<name>.yaml`); ``plan("config/config.yaml", given=False)``: the default config's
    dry run without --configfile, as `make run` plans it. Each dry run runs once per test run, when a test first
    asks for it, one at a time in the clone; the clone is ``plan.clone``.

    ``plan.prefetch([(config, given), ...])`` runs those of the dry runs not yet run in one process
    (tests/dry_runs.py: Snakemake's command line, called once per config, imported once), for a test that reads
    many; ``plan(...)`` then reads them as if each had run alone."""
    from vlprompt.experiment.config import load_config

    def clone_it(root: Path) -> None:
        if shutil.which("git") is None or not (REPO / ".git").exists():
            pytest.skip("needs git and a git checkout of the project (the test works in a clone of it)")
        _run(["git", "clone", "--quiet", REPO, root / "vlprompt"], root)

    clone = build_once(tmp_path_factory, "plans_clone", clone_it) / "vlprompt"
    shared = shared_root(tmp_path_factory)

    def name_of(config: str, given: bool) -> str:
        assert given or config == "config/config.yaml", "only the default config is found without --configfile"
        return "plan-" + config.replace("/", "-") + ("" if given else "-default")

    def job(config: str, given: bool, folder: Path) -> dict:
        cfg = load_config(clone / config, check_names=False)
        args = ["-s", str(REPO / "Snakefile"), "-d", str(clone), "-n", "--quiet", "rules"]
        return {
            "args": args + (["--configfile", str(clone / config)] if given else []),
            "workdir": str(clone),
            "resolved": str(clone / cfg["results_root"] / cfg["experiment"] / "config.json"),
            "folder": str(folder),
        }

    def run_dry_runs(jobs: list[dict]) -> None:
        """tests/dry_runs.py over ``jobs`` in one process, alone in the clone."""
        listing = Path(jobs[0]["folder"]).with_suffix(".jobs.json")
        listing.write_text(json.dumps(jobs))
        with FileLock(str(clone) + ".busy"):  # one dry run at a time in the clone
            proc = subprocess.run(
                [sys.executable, str(REPO / "tests" / "dry_runs.py"), str(listing)],
                env=TEST_ENV,
                capture_output=True,
                text=True,
                timeout=600 + 120 * len(jobs),
            )
        assert proc.returncode == 0, f"tests/dry_runs.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def plan(config: str, given: bool = True) -> Plan:
        name = name_of(config, given)
        folder = build_once(tmp_path_factory, name, lambda folder: run_dry_runs([job(config, given, folder)]))
        resolved = folder / "config.json"
        return Plan(
            returncode=int((folder / "returncode").read_text()),
            output=(folder / "output.txt").read_text(),
            resolved=json.loads(resolved.read_text()) if resolved.exists() else None,
            written=json.loads((folder / "written.json").read_text()),
        )

    def prefetch(wanted: list[tuple[str, bool]]) -> None:
        names = sorted({name_of(config, given): (config, given) for config, given in wanted}.items())
        with contextlib.ExitStack() as held:
            for name, _ in names:  # each dry run's own lock, always in this order, then the clone's (as plan does)
                held.enter_context(FileLock(str(shared / name) + ".lock"))
            todo = [
                (name, config, given) for name, (config, given) in names if not (shared / (name + ".done")).exists()
            ]
            if not todo:
                return
            for name, _, _ in todo:
                shutil.rmtree(shared / name, ignore_errors=True)
                (shared / name).mkdir()
            try:
                run_dry_runs([job(config, given, shared / name) for name, config, given in todo])
            except BaseException:
                for name, _, _ in todo:
                    shutil.rmtree(shared / name, ignore_errors=True)
                raise
            for name, _, _ in todo:
                (shared / (name + ".done")).touch()

    plan.clone = clone  # type: ignore[attr-defined]
    plan.prefetch = prefetch  # type: ignore[attr-defined]
    return plan


# --- small pocket data and models ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pocket_random_backbone():
    """The tiny pocket CLIP architecture with random weights (no checkpoint needed)."""
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone

    torch.manual_seed(0)  # random weights independent of test order
    return load_backbone(POCKET_MODEL, None)


def tiny_pocket(root, n_colours: int, n_shapes: int, per_class: dict) -> tuple:
    """A small pocket_noisy-style dataset generated under ``root``: (root, its split in CoOp's format)."""
    import json

    from vlprompt.data import pocket

    ds = pocket.PocketDataset(name="Tiny", style="noisy", per_class=per_class)
    world = pocket.World(n_colours=n_colours, n_shapes=n_shapes)
    return root, json.loads(pocket.generate(ds, world, root, progress=False).read_text())


def prepare_run_inputs(config_path, dataset: str, shots: int, seed: int = 1, test_bank: bool = True) -> None:
    """What the DAG's jobs build before a training run, by the CLI: the dataset, its base/new classes, the few-shot
    subset, the test (and validation) bank unless ``test_bank`` is false, and the few-shot subset's bank."""
    from vlprompt.cli import main as cli

    fewshot = ["--shots", str(shots), "--seed", str(seed)]
    for cmd in (
        ["prepare"],
        ["classes"],
        ["fewshot", *fewshot],
        *([["extract"]] if test_bank else []),
        ["extract", *fewshot],
    ):
        assert cli([*cmd, "--config", str(config_path), "--dataset", dataset, "--quiet"]) == 0
