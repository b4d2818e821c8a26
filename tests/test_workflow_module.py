"""The workflow used as a Snakemake module from a folder of one's own (docs/workflow_module.md).

`snakedeploy deploy-workflow` lays out the folder (the repository's config/ copied, workflow/Snakefile holding
only `module vlprompt:` and `use rule * from vlprompt`); the module points at this checkout's Snakefile, as a
`github(..., tag=...)` declaration points at a release; the folder's own small config replaces the copied one.
`snakemake --cores 2` there writes data, results and the report under that folder and nothing into the
repository. The config names `report.notes_file` as the repository's default config does (a file beside the
workflow's Snakefile, not in the user's folder), which is found.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from doc_commands import blocks

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
ENV.pop("SNAKEMAKE_PROFILE", None)
DOC = REPO / "docs" / "workflow_module.md"
RELEASE = "https://github.com/owner/vlprompt"  # the docs' release; the test deploys a clone of this checkout
MARKED = re.compile(r"<!-- (not )?tested: [^>]*-->\s*\n```bash\n.*?```", re.S)
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def run(cmd, cwd):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def small_config() -> dict:
    """The reduced pocket config of the DVC tests, zero-shot only (no training), under a name of its own."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "pocket_tiny.yaml").read_text())
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(experiment="mine", methods=["zeroshot"])
    cfg.pop("method_overrides", None)
    cfg["report"] = {"title": "My folder's experiment", "notes_file": default["report"]["notes_file"]}
    return cfg


def files(root: Path) -> set[str]:
    """Every file under root but in the version control, environment and cache folders."""
    out = set()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        out.update(str((Path(folder) / name).relative_to(root)) for name in names)
    return out


def page_commands(name: str) -> str:
    """The block ``name`` of docs/workflow_module.md as one shell line, the release's address a local clone's."""
    return " && ".join(blocks(DOC)[name][1])


def test_every_bash_block_of_the_module_and_s3_pages_says_which_test_runs_it():
    for page in (DOC, REPO / "docs" / "dvc_s3.md"):
        text = page.read_text()
        untold = re.findall(r"```bash\n(.*?)```", re.sub(MARKED, "", text), re.S)
        assert untold == [], f"{page.name}: bash blocks without a tested/not tested marker: {untold}"
        for path, name in re.findall(r"<!-- tested: (tests/[\w/]+\.py)::(\w+) -->", text):
            assert f'"{name}"' in (REPO / path).read_text(), f"{path} does not run the block {name!r} of {page.name}"


@pytest.mark.slow
def test_a_folder_with_only_a_config_runs_the_workflow_as_a_module(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the project (snakedeploy copies a clone of it)")
    if not (Path(sys.executable).parent / "snakedeploy").exists():
        pytest.skip("snakedeploy is not installed (its 0.17.1 requires Python < 3.13; pyproject.toml's marker)")
    before = files(REPO)
    run(["git", "clone", "--quiet", REPO, tmp_path / "vlprompt"], tmp_path)
    run(["bash", "-c", page_commands("deploy").replace(RELEASE, str(tmp_path / "vlprompt"))], tmp_path)
    mine = tmp_path / "my-project"

    snakefile = mine / "workflow" / "Snakefile"
    deployed = snakefile.read_text()
    assert "module vlprompt:" in deployed and "use rule * from vlprompt" in deployed, deployed
    assert (mine / "config" / "config.yaml").read_text() == (REPO / "config" / "config.yaml").read_text()
    # snakedeploy writes a local source's path relative to it; a release's is github("owner/vlprompt", ...)
    declaration = '"Snakefile"'
    assert deployed.count(declaration) == 1, deployed
    snakefile.write_text(deployed.replace(declaration, repr(str(REPO / "Snakefile"))))
    (mine / "config" / "config.yaml").write_text(yaml.safe_dump(small_config()))

    run(["bash", "-c", page_commands("run_module")], tmp_path)

    report = mine / "reports" / "mine" / "report.md"
    assert report.exists() and (mine / "reports" / "mine" / "index.html").exists()
    text = report.read_text()
    assert "zeroshot" in text and "My folder's experiment" in text
    notes = (REPO / small_config()["report"]["notes_file"]).read_text().strip().splitlines()[0]
    assert notes in text, "the notes file beside the workflow's Snakefile is not in the report"
    assert (mine / "results" / "mine" / "summary.csv").exists()
    assert any((mine / "data").iterdir())
    assert sorted(files(REPO) - before) == [], "the run wrote into the repository"
    assert not (REPO / "results" / "mine").exists() and not (REPO / "reports" / "mine").exists()
