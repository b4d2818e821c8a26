"""Glue between Snakemake and the library: the experiment's resolved config, and runs sharing a folder.

Called from the Snakefile when it is parsed (and from ``vlprompt unlock-stale``); pure Python, no
Snakemake import, so it is unit-tested like the rest of the library.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from vlprompt.config import ConfigError, validate
from vlprompt.io import atomic_write_text, config_hash

CONFIG_ENV = "VLPROMPT_CONFIG"  # the resolved config a job reads (set by the Snakefile)
CONFIGFILES_ENV = "VLPROMPT_CONFIGFILES"  # the config files given to snakemake, for rebuild hints
PARENT_ENV = "VLPROMPT_SNAKEMAKE"  # "<host>:<pid>" of the snakemake process that runs the job
RUNS_DIR = Path(".snakemake") / "vlprompt-runs"  # one JSON per running snakemake (onstart .. onsuccess/onerror)


def resolve_config(config: dict, base_dir: str | Path | None = None) -> tuple[dict, str]:
    """Validate and complete ``config``; write it where the jobs read it; return (config, its path).

    The experiment is the config Snakemake was given (``--configfile``, ``--config`` overrides) plus the
    schema's defaults. It is written twice, both under ``<results_root>/<experiment>/``:
    ``config.json``, the latest resolved config (for people and DVC), and ``configs/<hash>.json``, named by
    its content, which the jobs read (through ``$VLPROMPT_CONFIG``): a job reads exactly the config its
    pipeline was planned with, whatever another Snakemake call resolves meanwhile. Nothing is written
    outside the experiment's folder. Files are rewritten only when their content changes.

    ``report.notes_file`` is a path from the working directory; one that is not there but is in
    ``base_dir`` (the workflow's folder, for ``snakemake -d elsewhere``) is made absolute. With a ``base_dir``
    (the Snakefile), one that is in neither is a config error, said before any job runs.
    """
    cfg = validate(dict(config))
    notes = cfg.get("report", {}).get("notes_file")
    if notes and base_dir is not None and not Path(notes).exists():
        if not (Path(base_dir) / notes).exists():
            raise ConfigError(f"report.notes_file: {notes!r} does not exist (looked in {Path.cwd()} and "
                              f"{Path(base_dir).resolve()}); write it, or remove the key from the config")
        cfg["report"]["notes_file"] = str((Path(base_dir) / notes).resolve())
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    folder = Path(cfg["results_root"]) / cfg["experiment"]
    pinned = folder / "configs" / f"{config_hash(cfg)}.json"
    for path in (folder / "config.json", pinned):
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
    return cfg, str(pinned)


def job_environment(config_path: str, configfiles: list[str]) -> dict[str, str]:
    """What every job of this Snakemake process inherits: its config, the config files given (for the
    rebuild hints of corrupt artefacts) and the process to outlive none of (see :mod:`vlprompt.watchdog`)."""
    return {CONFIG_ENV: config_path, CONFIGFILES_ENV: os.pathsep.join(str(c) for c in configfiles),
            PARENT_ENV: f"{socket.gethostname()}:{os.getpid()}"}


# --- several Snakemake runs in one folder --------------------------------------------------------------

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
    atomic_write_text(path, json.dumps({
        "experiment": cfg["experiment"], "pid": os.getpid(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(argv)}) + "\n")
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
    return (f"experiment {rec['experiment']!r} (pid {rec['pid']} on {rec['host']}, started {rec['started']}: "
            f"{rec['command']})")


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
