"""Several Snakemake command lines (dry runs, mostly) in one Python process, for the tests that run many.

Each ``python -m snakemake`` pays for importing Python, Snakemake and the Snakefile's modules: about 4 s of CPU on
the 2-core machine, against 0.5 s for a further dry run in a process that has them. Here each command line goes
through Snakemake's own command line (``snakemake.cli.main``, what ``python -m snakemake`` calls) in turn, in one
process started for all of them:

- ``snakemake_calls([[args...], ...], env)``: a CompletedProcess for each (exit status, stdout, stderr), as
  ``subprocess.run([python, -m, snakemake, *args], capture_output=True, text=True)`` gives;
- ``python tests/dry_runs.py JOBS.json`` (conftest's ``config_plans``): a job is ``{"args": [...], "workdir": ...,
  "resolved": ..., "folder": ...}``; for each, in ``folder``: ``output.txt`` (its stdout, then its stderr),
  ``returncode``, ``written.json`` (the files under ``workdir`` it wrote or changed, relative, .git left out) and
  ``config.json`` (a copy of ``resolved``, the config the Snakefile resolved, when it wrote one; a stale one is
  removed first). The caller runs one such process at a time per workdir.

Imports nothing heavy at module level (tests import it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path


def file_times(root: Path) -> dict[str, int]:
    """Modification time of every file under ``root`` (relative paths), .git left out."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != ".git"
    }


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``snakemake ARGS`` in this process: (exit status, stdout, stderr), as ``python -m snakemake ARGS`` gives."""
    from snakemake.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd, argv = os.getcwd(), sys.argv
    sys.argv = ["snakemake", *args]  # what Snakemake's banner shows as the command
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            returncode = 0
        except SystemExit as stop:  # how Snakemake's command line ends, 0 included
            code = stop.code
            returncode = code if isinstance(code, int) else (0 if code is None else 1)
        except BaseException:  # what the command line would print before exiting 1
            traceback.print_exc()
            returncode = 1
        finally:
            os.chdir(cwd)  # -d changes the working directory
            sys.argv = argv
    return returncode, out.getvalue(), err.getvalue()


def dry_run(job: dict) -> None:
    """One job of a JOBS.json (above): the dry run, its outputs and the files it wrote, into ``job["folder"]``."""
    workdir, folder, resolved = Path(job["workdir"]), Path(job["folder"]), Path(job["resolved"])
    resolved.unlink(missing_ok=True)
    before = file_times(workdir)
    returncode, out, err = run_cli(job["args"])
    after = file_times(workdir)
    if resolved.exists():
        shutil.copy(resolved, folder / "config.json")
    written = sorted(path for path, time in after.items() if before.get(path) != time)
    (folder / "written.json").write_text(json.dumps(written))
    (folder / "output.txt").write_text(out + err)
    (folder / "returncode").write_text(str(returncode))


def snakemake_calls(calls: list[list[str]], env: dict, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Several ``snakemake ARGS`` command lines (dry runs, --lint, ...; each with its own -s/-d) run one after the
    other in one Python process: for each, a CompletedProcess as ``subprocess.run([python, -m, snakemake, *ARGS],
    capture_output=True, text=True, env=env)`` gives (but ``args``: the Snakemake arguments)."""
    with tempfile.TemporaryDirectory() as tmp:
        listing, answers = Path(tmp) / "calls.json", Path(tmp) / "answers.json"
        listing.write_text(json.dumps(calls))
        proc = subprocess.run(
            [sys.executable, __file__, "--calls", str(listing), str(answers)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout * len(calls),
        )
        assert proc.returncode == 0 and answers.exists(), (
            f"{__file__} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
        return [
            subprocess.CompletedProcess(args, *answer)
            for args, answer in zip(calls, json.loads(answers.read_text()), strict=True)
        ]


if __name__ == "__main__":
    if sys.argv[1] == "--calls":  # CALLS.json ANSWERS.json: [[args, ...], ...] -> [[returncode, stdout, stderr], ...]
        calls = json.loads(Path(sys.argv[2]).read_text())
        Path(sys.argv[3]).write_text(json.dumps([run_cli(args) for args in calls]))
    else:  # JOBS.json
        for job in json.loads(Path(sys.argv[1]).read_text()):
            dry_run(job)
