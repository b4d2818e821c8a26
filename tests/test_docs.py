"""The README and the documentation site: size, links, the strict build, and the commands they show.

- The README stays a door (at most 8 000 characters); every relative link of the README and docs/ resolves.
- ``mkdocs build --strict`` succeeds: no broken link or anchor, no missing page, no API page that fails to import.
- Every ``bash`` block of the README and docs/ is run by a test or says why not (tests/doc_commands.py); the
  blocks marked ``tested: tests/test_docs.py::<name>`` are checked here. Commands that would run a whole
  experiment (minutes to hours) are checked without running it: their config, with the line's ``--config``
  overrides, validates as Snakemake would load it, and their targets are rules of the workflow; ``make`` lines
  are dry-run (``make -n``); ``python -m vlprompt`` lines and the real benchmark's ``snakemake -n`` are run.
"""

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from doc_commands import REPO, blocks, commands, markers_of_tested_blocks, pages, skipped, unmarked
from vlprompt import cli
from vlprompt.experiment.config import coerce_strings, validate
from vlprompt.methods import list_methods

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
README_LIMIT = 8000
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
RULE = re.compile(r"^rule (\w+):", re.M)


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code, where a bracket is not a link."""
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def generated_pages() -> set[str]:
    """Pages the site's hook (scripts/docs_hooks.py) adds at build time, relative to docs/."""
    return {"methods/index.md"} | {f"methods/{name}.md" for name in list_methods()}


def test_readme_is_a_door_not_the_house():
    size = len((REPO / "README.md").read_text())
    assert size <= README_LIMIT, f"README.md has {size} characters (at most {README_LIMIT}): move detail to docs/"


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = []
    for page in pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, a mail address, an anchor on the same page
            path = target.split("#")[0]
            resolved = (page.parent / path).resolve()
            in_docs = resolved.is_relative_to(REPO / "docs")
            if not resolved.exists() and not (
                in_docs and resolved.relative_to(REPO / "docs").as_posix() in generated_pages()
            ):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (the `make docs` command, into a temporary folder): a warning is a failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**ENV, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    catalogue = (tmp_path / "site" / "methods" / "index.html").read_text()
    assert all(f"{name}/" in catalogue for name in list_methods())  # each method's row links its page
    assert re.search(r"hand-computed</em> \(\d+\)", catalogue), "the catalogue's counts are not filled in"
    assert (tmp_path / "site" / "methods" / "coop" / "index.html").exists()


def test_every_bash_block_is_tested_or_says_why_not():
    missing = unmarked()
    assert not missing, (
        "these bash blocks have no marker; put one on the line before each: "
        "<!-- tested: tests/<file>.py::<name> --> (that test reads it with doc_commands.commands(name)) or "
        "<!-- not tested: <reason> -->\n" + "\n".join(missing)
    )


def test_each_tested_marker_names_a_test_file_that_reads_its_block():
    markers = markers_of_tested_blocks()
    names = [name for _, _, name in markers]
    assert len(names) == len(set(names)), f"block names used twice: {sorted({n for n in names if names.count(n) > 1})}"
    for page, path, name in markers:
        assert (REPO / path).is_file(), f"{page}: the marker of block {name!r} names {path}, which does not exist"
        text = (REPO / path).read_text()
        reads = f'"{name}"' in text or re.search(rf"^def {name}\(", text, re.M)  # by name, or the test itself
        assert reads, f"{page}: {path} neither reads the block {name!r} nor has a test of that name"


def test_each_skipped_block_says_why():
    for page, reason, lines in skipped():
        assert len(reason.split()) >= 3, f"{page}: the block starting {lines[:1]} is skipped without a reason"


# The blocks of this file's markers.


def _snakemake_config(line: str) -> tuple[dict, list[str]]:
    """The config a ``snakemake`` line runs (its --configfile, else config/config.yaml, plus its --config
    overrides, strings coerced as the Snakefile does) and its targets."""
    args = shlex.split(line)
    assert Path(args[0]).name == "snakemake", line
    configfile, overrides, targets = "config/config.yaml", {}, []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--configfile":
            configfile, i = args[i + 1], i + 2
        elif arg == "--config":
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                key, value = args[i].split("=", 1)
                overrides[key] = yaml.safe_load(value)
                i += 1
        elif arg in ("--cores", "-j", "--profile"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            targets.append(arg)
            i += 1
    cfg = yaml.safe_load((REPO / configfile).read_text())
    cfg.update(overrides)
    return validate(coerce_strings(cfg)), targets


def _rules() -> set[str]:
    return {m for f in (REPO / "workflow" / "rules").glob("*.smk") for m in RULE.findall(f.read_text())}


def _check_line(line: str) -> None:
    program = Path(shlex.split(line)[0]).name
    if program == "snakemake":
        cfg, targets = _snakemake_config(line)
        assert cfg["methods"] and cfg["datasets"], line
        assert set(targets) <= _rules(), f"{line}: unknown target(s) {set(targets) - _rules()}"
    elif program == "python" and shlex.split(line)[1:3] == ["-m", "vlprompt"]:
        out = io.StringIO()  # run in this process: the same main() as `python -m vlprompt`, without a new start-up
        with contextlib.redirect_stdout(out), contextlib.chdir(REPO):
            assert cli.main(shlex.split(line)[3:]) in (0, None), line
        assert out.getvalue().strip(), f"{line} printed nothing"
    else:
        raise AssertionError(f"no check for the documented command {line!r}")


def test_the_quick_start_commands_are_make_targets_that_run_the_pipeline_and_the_tests():
    """`make run` and `make test`, in the README and on the getting-started page, dry-run (``make -n``) to the
    pipeline (stale-lock removal, then snakemake) and to pytest."""
    assert commands("readme_quick_start") == commands("quick_start") == ["make run", "make test"]
    out = subprocess.run(["make", "-n", "run", "test"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run, test = out.stdout.split("-m vlprompt unlock-stale", 1)[1].split("-m pytest", 1)[0], out.stdout
    assert "snakemake --cores" in run and "-m pytest" in test, out.stdout


def test_the_using_it_commands_validate_and_run():
    """Each snakemake line's experiment validates (``config/my.yaml`` standing for a user's config) and its
    targets are rules; the ``python -m vlprompt`` lines run and print."""
    for line in commands("using_it", {".venv/bin/": "", "config/my.yaml": "config/pocket_fewshot.yaml"}):
        _check_line(line)


def test_the_shipped_configs_block_validates():
    """The other shipped experiments, each with the line's overrides: the config Snakemake would load."""
    lines = commands("shipped_configs", {".venv/bin/": ""})
    assert len(lines) == 8
    for line in lines:
        _check_line(line)
    cfg, _ = _snakemake_config(lines[0])
    assert cfg["shots"] == [1, 2, 4, 8, 16]  # the override reaches the config


def test_the_documented_experiment_configs_validate():
    """Every config file a command of the README or docs/ names, tested block or not, exists and validates."""
    named = set()
    for page in pages():
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(), re.S):
            named |= set(re.findall(r"--configfile\s+(config/[\w/.-]+\.ya?ml)", block))
    named.discard("config/my.yaml")  # the user's own config in the examples
    assert "config/base2novel.yaml" in named
    for path in sorted(named):
        assert (REPO / path).is_file(), f"a documented command names {path}, which does not exist"
        validate(coerce_strings(yaml.safe_load((REPO / path).read_text())))


@pytest.mark.slow  # a dry run of the full-size base-to-novel grid: the full suite, not the fast tier
def test_the_real_benchmark_dry_runs_here(tmp_path):
    """``snakemake -n --configfile config/base2novel.yaml``, as documented, in an empty folder: no data, no
    weights, and the plan has the training jobs."""
    (line,) = commands("real_benchmark_dry_run")
    args = shlex.split(line)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), *args[1:]]
        + ["--quiet", "rules"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train_images" in proc.stdout + proc.stderr and "extract_test" in proc.stdout + proc.stderr


def test_the_blocks_this_file_checks_exist():
    mine = {name for name, (path, _) in blocks(None).items() if path == "tests/test_docs.py"}
    assert mine == {"readme_quick_start", "quick_start", "using_it", "shipped_configs", "real_benchmark_dry_run"}
