"""Atomic writes and provenance: an interrupted job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import subprocess
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


def provenance(**extra: Any) -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": package_versions(), **extra}
