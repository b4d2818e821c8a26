"""Check that the pinned dependency set installs from wheels on each supported Python version.

    python scripts/check_python_versions.py 3.11 3.12 3.13

For each version, asks pip to resolve the project (`pip install --dry-run --only-binary=:all:
--python-version X --target <tmp> .`), downloading nothing but metadata. Some dependencies (ours or
theirs) publish only a source archive; when that archive builds into a pure-Python wheel
(`py3-none-any`, valid for every version) it is built once and offered to pip, and the resolution is
retried. A package with no wheel for that version whose source builds a compiled wheel is a failure:
installing it there would need a compiler and its build dependencies. Exits 1 naming the version and the
package; used by tests/test_workflow.py and by whoever changes a pin or `requires-python`.

The first version is checked alone: the pure-Python wheels it needs built are found one resolution at a time
(each a few seconds), and the other versions need the same ones. The other versions are then checked side by
side, each starting from a copy of those wheels (one resolution each when nothing else is missing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what pip could not find: a requirement with no distribution, or the requirements behind a conflict
MISSING = re.compile(r"No matching distribution found for (\S+)|depends on (\S+)")


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def build_pure_wheel(requirement: str, wheels: Path) -> str | None:
    """Build ``requirement`` from its source archive into ``wheels``; the wheel's name if it is pure Python."""
    before = set(wheels.glob("*.whl"))
    proc = _pip("wheel", "--no-deps", "--quiet", "--no-binary", ":all:", "-w", str(wheels), requirement)
    built = set(wheels.glob("*.whl")) - before
    if proc.returncode != 0 or not built:
        return None
    name = built.pop().name
    return name if name.endswith("-py3-none-any.whl") or "-py2.py3-none-any.whl" in name else None


def check(version: str, wheels: Path, project: Path = REPO, max_rounds: int = 10) -> tuple[bool, str]:
    """(ok, message) for one Python version."""
    built: list[str] = []
    for _ in range(max_rounds):
        with tempfile.TemporaryDirectory() as target:
            proc = _pip(
                "install",
                "--dry-run",
                "--only-binary=:all:",
                "--find-links",
                str(wheels),
                "--python-version",
                version,
                "--target",
                target,
                str(project),
            )
        if proc.returncode == 0:
            pure = sorted(w.name for w in wheels.glob("*.whl"))
            extra = f" (with pure-Python wheels built from source: {', '.join(pure)})" if pure else ""
            return True, f"Python {version}: every pinned dependency resolves to wheels{extra}"
        err = proc.stdout + proc.stderr  # the reasons of a conflict are not on stderr alone
        if "requires a different Python" in err:
            return False, f"Python {version}: outside the project's requires-python"
        candidates = list(dict.fromkeys(a or b for a, b in MISSING.findall(err)))
        if not candidates:
            return False, f"Python {version}: pip failed:\n{proc.stderr[-2000:]}"
        spec = candidates[0]
        wheel = build_pure_wheel(spec, wheels)
        if wheel is None:
            return False, (
                f"Python {version}: {spec} has no wheel for this version and its source does not "
                f"build a pure-Python wheel (it needs a compiler there)"
            )
        built.append(wheel)
    return False, f"Python {version}: gave up after {max_rounds} rounds"


def check_from_copy(version: str, wheels: Path) -> tuple[bool, str]:
    """check() starting from a copy of the pure-Python wheels in ``wheels`` (the copy is its own to add to)."""
    with tempfile.TemporaryDirectory() as own:
        for wheel in wheels.glob("*.whl"):
            shutil.copy(wheel, own)
        return check(version, Path(own))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("versions", nargs="+", help="Python versions, e.g. 3.12")
    args = p.parse_args(argv)
    first, *rest = args.versions
    with tempfile.TemporaryDirectory() as wheels:
        results = [check(first, Path(wheels))]
        with ThreadPoolExecutor(max_workers=max(1, len(rest))) as pool:
            results += pool.map(lambda version: check_from_copy(version, Path(wheels)), rest)
    for ok, message in results:
        print(("ok   " if ok else "FAIL ") + message, flush=True)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
