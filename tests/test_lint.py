"""Lint is part of the test suite, so CI (which runs `make test`) enforces it: ruff's rules and formatting, the
import layers of docs/architecture.md and the type checker, each run as `make lint` runs it, with the tools of this
environment (the folder of the running Python). mypy keeps its cache in .mypy_cache: the first run reads the
stubs of torch and numpy (about 20 s of CPU, 1.5 minutes of wall time on two busy cores), later runs only what
changed (a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PATHS = ["src", "tests", "benchmarks", "scripts"]

CHECKS = {
    "ruff check": [str(BIN / "ruff"), "check", *PATHS],
    "ruff format": [str(BIN / "ruff"), "format", "--check", *PATHS],
    "lint-imports": [str(BIN / "lint-imports"), "--no-logo"],
    "mypy": [str(BIN / "mypy")],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_lint_passes(name):
    cmd = CHECKS[name]
    if not Path(cmd[0]).exists():
        pytest.fail(f"{cmd[0]} is missing: `make install` installs the test extra (pyproject.toml)")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (
        f"`{' '.join(cmd[1:])}` failed; fix what it says:\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
    )


def test_the_type_checker_reads_the_project_config(tmp_path):
    """mypy run here takes pyproject.toml's [tool.mypy]: a bad assignment inside an unannotated function is an
    error only with check_untyped_defs, which the config sets (without it mypy skips the body and passes)."""
    bad = tmp_path / "untyped.py"
    bad.write_text("def f():\n    x: int = 'text'\n    return x\n")
    out = subprocess.run([str(BIN / "mypy"), str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "Incompatible types in assignment" in out.stdout, out.stdout + out.stderr
