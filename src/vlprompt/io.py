"""Atomic writes and provenance: an interrupted job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically and byte for byte reproducibly: saved through a buffer, the
    archive's inner folder is always ``archive``, never the random temporary file name (equal tensors, equal
    bytes, equal sha256)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


class CorruptArtefactError(RuntimeError):
    """An artefact does not match what was recorded when it was written (truncated, overwritten, unreadable).

    The message is one line: the file, what is wrong, and the command that rebuilds it.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        super().__init__(f"corrupt artefact {path}: {problem}; rebuild it with: {rebuild_command(path)}")


def rebuild_command(path: str | Path) -> str:
    """The Snakemake command that re-creates ``path`` (and, on the next run, everything that reads it).

    Inside a Snakemake job the experiment's config files are in ``VLPROMPT_CONFIGFILES`` (set by the
    Snakefile), so the command names them.
    """
    configs = os.environ.get("VLPROMPT_CONFIGFILES", "")
    given = "".join(f" --configfile {c}" for c in configs.split(os.pathsep) if c)
    return f"snakemake --cores all{given} --force {path}"


def file_record(path: str | Path) -> dict:
    """Size and sha256 of a file, as sidecars record them."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def verify_file(path: str | Path, record: dict) -> None:
    """Check ``path`` against a :func:`file_record`; raise :class:`CorruptArtefactError` on a mismatch."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with: {rebuild_command(path)}")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptArtefactError(path, f"{size} bytes, {record['bytes']} when it was written")
    if sha256_file(path) != record["sha256"]:
        raise CorruptArtefactError(path, "its sha256 differs from the one recorded when it was written")


def read_artefact_json(path: str | Path) -> Any:
    """A JSON artefact of the pipeline; unreadable (truncated, overwritten) is a :class:`CorruptArtefactError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with: {rebuild_command(path)}")
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptArtefactError(path, f"not valid JSON ({err})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(cfg: Any) -> str:
    """A short, order-independent hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    names = ["vlprompt", "torch", "open_clip_torch", "numpy", "scipy", "pandas", "snakemake"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


# --- the environment and its lock (docs/environments.md) ---------------------------------------------------------

LOCK_ENV = "VLPROMPT_LOCK"  # a lock file to compare with, for an installation without the source tree (a container)
NO_LOCK = "no lock found"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository, when the package is imported from src/
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)


def canonical_name(name: str) -> str:
    """A distribution's name as the index compares it (PEP 503): ``PyYAML``, ``pyyaml`` and ``py_yaml`` alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a requirements file or lock."""
    return {canonical_name(name): version for name, version in _PIN.findall(text)}


def lock_path(python: str | None = None) -> Path | None:
    """The lock of the running Python (or of ``python``, "3.X"): ``$VLPROMPT_LOCK``, else the source tree's
    ``requirements/py3.X.txt`` (a clone with an editable install); None when there is neither (a wheel install)."""
    given = os.environ.get(LOCK_ENV)
    if given:
        return Path(given) if Path(given).is_file() else None
    version = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    path = _SOURCE_ROOT / "requirements" / f"py{version}.txt"
    return path if path.is_file() else None


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution the running Python imports from: read from the names of
    the ``<name>-<version>.dist-info`` folders on ``sys.path`` (what ``importlib.metadata`` finds, without reading
    every METADATA file: 10 ms instead of 0.5 s, paid by every job)."""
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip or a missing folder
            continue
        for folder in names:
            if folder.endswith((".dist-info", ".egg-info")):
                name, _, version = folder.rsplit(".", 1)[0].partition("-")
                if version:  # the first of a name on sys.path is the one imported
                    out.setdefault(canonical_name(name), version)
    return out


def _same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import InvalidVersion, Version

        try:
            return Version(a) == Version(b)
        except InvalidVersion:
            return a == b
    except ImportError:
        return a == b


def lock_differences(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per locked package the environment does not have at its locked version (a local build such as
    ``2.14.1+cpu`` differs from ``2.14.1``); packages installed beyond the lock are not differences."""
    out = []
    for name, version in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            out.append(f"{name} not installed (locked {version})")
        elif not _same_version(have, version):
            out.append(f"{name} {have} installed, {version} locked")
    return out


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """The running environment against its lock: Python version, the lock file (relative to the repository) and its
    sha256, whether every locked package is installed at its locked version, and the differences if not."""
    out: dict[str, Any] = {"python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    path = lock_path()
    if path is None:
        return {**out, "lock": NO_LOCK, "lock_sha256": None, "matches_lock": None, "differences": []}
    try:
        shown = str(path.resolve().relative_to(_SOURCE_ROOT))
    except ValueError:
        shown = str(path)
    differences = lock_differences(read_pins(path.read_text()), installed_versions())
    return {
        **out,
        "lock": shown,
        "lock_sha256": sha256_file(path),
        "matches_lock": not differences,
        "differences": differences,
    }


def provenance(**extra: Any) -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": package_versions(), "environment": environment(), **extra}
