"""Atomic writes and provenance: an interrupted job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, nbytes: int | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    ``nbytes``, the size about to be written, is checked against the free space first; a full disk met while
    writing (ENOSPC) is a :class:`NoSpaceError` either way, never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nbytes is not None:
        require_space(path, nbytes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        with space_errors(path, nbytes):
            yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- disk space: a full disk is one line naming the file, the bytes, and the config key that moves the folder ---

_FOLDER_KEYS: dict[Path, str] = {}  # folder -> the config key that moves it (set from the config by the CLI)


def register_folder_keys(folders: dict[str, str | Path | None]) -> None:
    """``{config key: folder}``, e.g. ``{"results_root": "results", "data_root": "data"}``: a :class:`NoSpaceError`
    for a file under one of them names its key."""
    for key, folder in folders.items():
        if folder:
            _FOLDER_KEYS[Path(os.path.abspath(folder))] = key


def folder_key(path: str | Path) -> str:
    """The config key of the innermost registered folder holding ``path``."""
    path = Path(os.path.abspath(path))  # not resolved: a folder that links elsewhere is still under its key
    best = None
    for folder, key in _FOLDER_KEYS.items():
        if path.is_relative_to(folder) and (best is None or len(folder.parts) > len(best[0].parts)):
            best = (folder, key)
    return best[1] if best else "results_root` or `data_root"


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def _size(n: int) -> str:
    """``12928`` as ``12.6 KiB (12928 bytes)``; under a KiB, ``1000 bytes``."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"


class NoSpaceError(RuntimeError):
    """The disk is too full for a file a job writes; one line: the file, the bytes needed and free, the fix."""

    def __init__(self, path: str | Path, needed: int | None, free: int):
        self.path, self.needed, self.free = Path(path), needed, free
        need = f"needs {_size(needed)}" if needed is not None else "needs more"
        super().__init__(
            f"no space for {path}: it {need} and its disk has {_size(free)} free; free space "
            f"there, or move the folder to a disk with room (config key `{folder_key(path)}`), and run the same "
            "command again"
        )


def require_space(path: str | Path, nbytes: int) -> None:
    """Raise :class:`NoSpaceError` unless ``nbytes`` fit on the filesystem of ``path``."""
    free = free_bytes(path)
    if nbytes > free:
        raise NoSpaceError(path, nbytes, free)


@contextlib.contextmanager
def space_errors(path: str | Path, nbytes: int | None = None):
    """Turn a full disk (ENOSPC, EDQUOT) met inside the block into :class:`NoSpaceError` for ``path``."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(path, nbytes, free_bytes(path)) from None
        raise


def preallocate(path: str | Path, nbytes: int, name: str | Path | None = None) -> None:
    """Reserve the blocks of ``path``'s first ``nbytes`` now (``posix_fallocate``), so that writing through a memory
    map later cannot meet a full disk: that would be a SIGBUS ("Bus error"), not an error. ``name``: the file to
    name in the error (the final path of a temporary file)."""
    with open(path, "r+b") as f, space_errors(name or path, nbytes):
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: written as before
                raise


def create_memmap(path: str | Path, dtype, shape: tuple, name: str | Path | None = None):
    """A new ``.npy`` file of ``shape`` opened as a memory map (``np.lib.format.open_memmap``), its space checked
    and allocated before the first write (:func:`preallocate`)."""
    import numpy as np

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize + 128  # the .npy header is 128 bytes or a multiple
    require_space(name or path, nbytes)
    with space_errors(name or path, nbytes):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    preallocate(path, os.path.getsize(path), name)
    return arr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode()
    with atomic_path(path, nbytes=len(data)) as tmp:
        tmp.write_bytes(data)


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
    with atomic_path(path, nbytes=buffer.getbuffer().nbytes) as tmp:
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
