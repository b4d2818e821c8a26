"""Check that each supported Python's lock installs from wheels: asks the package index again.

    python scripts/check_python_versions.py 3.11 3.12 3.13

For each version, its lock requirements/py3.X.txt (written by `make lock`, docs/environments.md):

- every locked package but the Makefile's LOCK_SDISTS resolves to a wheel for that Python on Linux x86-64:
  `pip install --dry-run --no-deps --only-binary=:all: --python-version X --platform manylinux_2_28_x86_64
  (and the older manylinux tags) --target <tmp> --require-hashes -r <lock>`, which reads the index pages and the
  wheels' metadata, downloading no wheel (a file it does read must have a locked hash);
- each of LOCK_SDISTS (PyPI has only its source) is built, from the locked archive with its hash, into a wheel
  that must be pure Python (py3-none-any, valid for every version): otherwise installing it would need a compiler.

`uv pip compile --only-binary :all:` already refused to write a lock it could not fill with wheels, so this finds
what changed on the index since (a file deleted or yanked) and a lock edited by hand. Exits 1 naming the version
and the package; used by tests/test_workflow.py (slow, needs pypi.org) and by whoever changes a pin.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the Makefile's LOCK_PLATFORM (glibc 2.28, x86-64) as pip's --platform tags: pip does not add the older manylinux
# tags a glibc 2.28 system also runs, so they are all named, with their legacy aliases (PEP 600)
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    f"{alias}_x86_64" for alias in ("manylinux2014", "manylinux2010", "manylinux1")
]
MISSING = re.compile(r"No matching distribution found for (\S+)|(?:for|of) (\S+==\S+)")


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def source_only(makefile: Path = REPO / "Makefile") -> set[str]:
    """The Makefile's LOCK_SDISTS: the locked packages PyPI publishes no wheel of."""
    found = re.search(r"^LOCK_SDISTS := (.*)$", makefile.read_text(), re.M)
    return set(found.group(1).split()) if found else set()


def split_lock(text: str, names: set[str]) -> tuple[str, str]:
    """The lock's entries (a pin, its hashes, its comments) without, and with, the packages of ``names``."""
    keep, take = [], []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        name = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", block)
        (take if name and name.group(1).lower() in names else keep).append(block)
    return "\n".join(keep) + "\n", "\n".join(take) + "\n"


def check(version: str, lock: Path, sdists: set[str], cache: dict[str, str] | None = None) -> tuple[bool, str]:
    """(ok, message) for one Python version; ``cache`` keeps the wheel built of a source entry for the next."""
    cache = {} if cache is None else cache
    if not lock.is_file():
        return False, f"Python {version}: no lock {lock.relative_to(REPO)}; run make lock"
    wheels, sources = split_lock(lock.read_text(), sdists)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "wheels.txt").write_text(wheels)
        proc = _pip(
            "install",
            "--dry-run",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            version,
            *(arg for tag in PLATFORMS for arg in ("--platform", tag)),
            "--implementation",
            "cp",
            "--target",
            str(Path(tmp) / "target"),
            "--require-hashes",
            "-r",
            str(Path(tmp) / "wheels.txt"),
        )
        if proc.returncode != 0:
            err = proc.stdout + proc.stderr
            missing = next((a or b for a, b in MISSING.findall(err)), None)
            mismatch = re.search(r"^\s+(\S+==\S+) from \S+", err, re.M) if "DO NOT MATCH THE HASHES" in err else None
            if mismatch:
                what = f"{mismatch.group(1)}: the index's file does not have a hash of the lock"
            elif missing:
                what = f"{missing} has no wheel for it"
            else:
                what = f"pip failed:\n{err[-2000:]}"
            return False, f"Python {version}: {what}"
        built = []
        for entry in filter(str.strip, re.split(r"\n(?=[A-Za-z0-9])", sources)):
            if entry in cache:
                built.append(cache[entry])
                continue
            (Path(tmp) / "source.txt").write_text(entry + "\n")
            out = Path(tmp) / "built"
            proc = _pip(
                "wheel",
                "--no-deps",
                "--quiet",
                "--require-hashes",
                "-w",
                str(out),
                "-r",
                str(out.parent / "source.txt"),
            )
            names = [w.name for w in out.glob("*.whl")] if out.is_dir() else []
            pin = entry.split()[0]
            if proc.returncode != 0 or not names:
                return False, f"Python {version}: {pin} (source only) does not build: {proc.stderr[-1000:]}"
            wheel = names[-1]
            if not (wheel.endswith("-py3-none-any.whl") or wheel.endswith("-py2.py3-none-any.whl")):
                return False, f"Python {version}: {pin} builds {wheel}, not pure Python (it needs a compiler there)"
            built.append(wheel)
            cache[entry] = wheel
            for w in out.glob("*.whl"):
                w.unlink()
    extra = f" (pure-Python wheels built from source: {', '.join(built)})" if built else ""
    return True, f"Python {version}: every package of {lock.relative_to(REPO)} has a wheel{extra}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("versions", nargs="+", help="Python versions, e.g. 3.12")
    args = p.parse_args(argv)
    sdists, cache = source_only(), {}
    failed = False
    for version in args.versions:
        ok, message = check(version, REPO / "requirements" / f"py{version}.txt", sdists, cache)
        print(("ok   " if ok else "FAIL ") + message, flush=True)
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
