"""How long the test suite takes, and where: the wall time of one pytest run and the seconds of each test file.

Runs pytest as `make test` does (``-n 2``; give ``--fast`` for `make test-fast`'s selection, or any pytest
arguments after ``--``) with a JUnit XML report, then prints:

- the run's wall time, the number of tests by outcome, the date and the load average before and after (a busy
  machine's figures are upper bounds: quote the quiet figure only from a run on a quiet machine);
- each test file's seconds (set-up, call and tear-down of its tests, the module fixtures included, summed over
  both workers: the files add up to more than the wall time), the longest first;
- the slowest tests.

Usage (from the repository root, with the project's environment):
    .venv/bin/python benchmarks/suite_time.py                    # the full suite, as make test
    .venv/bin/python benchmarks/suite_time.py --fast             # the fast tier, as make test-fast
    .venv/bin/python benchmarks/suite_time.py -- tests/test_e2e.py tests/test_slurm.py   # some files
    .venv/bin/python benchmarks/suite_time.py --workers 1 --top 40 -- tests/test_isolation.py
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fast_selection() -> list[str]:
    """`make test-fast`'s pytest arguments after -n (the Makefile's test-fast line, FAST_SKIPS expanded)."""
    text = (REPO / "Makefile").read_text()
    skips = re.search(r"^FAST_SKIPS\s*:?=\s*(.*)$", text, re.M).group(1)
    line = re.search(r"^test-fast:.*\n\t(.*)$", text, re.M).group(1)
    args = shlex.split(line.replace("$(FAST_SKIPS)", skips))
    return args[args.index("$(TEST_WORKERS)") + 1 :]


def per_file(report: Path) -> tuple[dict[str, float], list[tuple[float, str]], dict[str, int]]:
    """Seconds per test file, (seconds, test) of every test, and the count of tests by outcome."""
    files: dict[str, float] = defaultdict(float)
    tests, outcomes = [], defaultdict(int)
    for case in ET.parse(report).getroot().iter("testcase"):
        seconds = float(case.get("time", 0))
        name = case.get("classname", "").replace(".", "/") + ".py"
        module = name if (REPO / name).exists() else case.get("file") or name
        files[module] += seconds
        tests.append((seconds, f"{module}::{case.get('name')}"))
        kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[kind] += 1
    return dict(files), sorted(tests, reverse=True), dict(outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (make test: 2)")
    parser.add_argument("--fast", action="store_true", help="make test-fast's selection (not slow, its --ignores)")
    parser.add_argument("--top", type=int, default=25, help="how many of the slowest tests to print")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (files, -k, -m ...)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
        cmd += ["-o", "junit_duration_report=total", "--durations=0"]
        cmd += ["-n", str(args.workers) if args.workers > 1 else "0"]
        cmd += (fast_selection() if args.fast else []) + args.pytest_args
        load_before = os.getloadavg()
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - start
        load_after = os.getloadavg()
        if not report.exists():
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print("suite_time: pytest wrote no report (above: its output)", file=sys.stderr)
            return 1
        files, tests, outcomes = per_file(report)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print("python " + " ".join(cmd[1:]))
    print(f"{when}: {wall:.0f} s wall ({wall / 60:.1f} min), pytest exit status {proc.returncode}")
    print("tests: " + ", ".join(f"{n} {kind}" for kind, n in sorted(outcomes.items())))
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(f"\nseconds per file (set-up + call + tear-down, summed over workers; total {sum(files.values()):.0f} s):")
    for name, seconds in sorted(files.items(), key=lambda item: -item[1]):
        print(f"{seconds:9.1f}  {name}")
    print(f"\nslowest {min(args.top, len(tests))} tests:")
    for seconds, name in tests[: args.top]:
        print(f"{seconds:9.1f}  {name}")
    return 0 if proc.returncode in (0, 5) else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
