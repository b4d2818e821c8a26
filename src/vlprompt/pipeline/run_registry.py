"""The Snakemake processes working in one folder: each registers itself while it runs, so that a stale lock left by
a killed one can be told from a live run's (``vlprompt unlock-stale``) and a job can watch its parent."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from vlprompt.io import atomic_write_text

RUNS_DIR = Path(".snakemake") / "vlprompt-runs"  # one JSON per running snakemake (onstart .. onsuccess/onerror)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_run(cfg: dict, argv: list[str], root: str | Path = ".") -> Path:
    """Record this Snakemake process as running ``cfg``'s experiment in ``root`` (removed when it ends)."""
    path = Path(root) / RUNS_DIR / f"{socket.gethostname()}-{os.getpid()}.json"
    atomic_write_text(
        path,
        json.dumps(
            {
                "experiment": cfg["experiment"],
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(argv),
            }
        )
        + "\n",
    )
    return path


def unregister_run(root: str | Path = ".") -> None:
    (Path(root) / RUNS_DIR / f"{socket.gethostname()}-{os.getpid()}.json").unlink(missing_ok=True)


def running(root: str | Path = ".") -> list[dict]:
    """The other Snakemake runs recorded in ``root`` that are still alive (stale records are removed).

    A record from another host cannot be checked and is kept (a shared file system on a cluster).
    """
    out = []
    host = socket.gethostname()
    for path in sorted((Path(root) / RUNS_DIR).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("host") == host and rec.get("pid") == os.getpid():
            continue
        if rec.get("host") == host and not process_alive(int(rec.get("pid", -1))):
            path.unlink(missing_ok=True)
            continue
        out.append(rec)
    return out


def describe(rec: dict) -> str:
    return (
        f"experiment {rec['experiment']!r} (pid {rec['pid']} on {rec['host']}, started {rec['started']}: "
        f"{rec['command']})"
    )


def snakemake_processes(root: str | Path = ".") -> list[int]:
    """Pids of snakemake processes on this host working in ``root`` (read from /proc; Linux)."""
    root = Path(root).resolve()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        if int(proc.name) in (os.getpid(), os.getppid()) or not any(b"snakemake" in part for part in cmd[:3]):
            continue
        args = [a.decode(errors="replace") for a in cmd]
        workdir = cwd
        for flag in ("-d", "--directory"):
            if flag in args and args.index(flag) + 1 < len(args):
                workdir = (cwd / args[args.index(flag) + 1]).resolve()
        if workdir == root:
            pids.append(int(proc.name))
    return pids


def unlock_stale(root: str | Path = ".") -> str | None:
    """Remove Snakemake's lock in ``root`` if no snakemake process works there any more (it was killed).

    Returns what was done, or None. Left alone: a lock while a snakemake of this host runs in ``root``, or
    while a run recorded by another host is registered (a shared file system: it cannot be checked).
    """
    locks = Path(root) / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return None
    if snakemake_processes(root) or any(r["host"] != socket.gethostname() for r in running(root)):
        return None
    removed = sorted(p.name for p in locks.iterdir())
    for p in locks.iterdir():
        p.unlink()
    return f"removed the stale Snakemake lock of a run that no longer exists ({', '.join(removed)})"
