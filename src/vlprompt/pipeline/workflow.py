"""Glue between Snakemake and the library: the experiment's resolved config and what every job inherits.

Called from the Snakefile when it is parsed (and from ``vlprompt unlock-stale``); pure Python, no
Snakemake import, so it is unit-tested like the rest of the library.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from vlprompt.experiment.config import ConfigError, validate
from vlprompt.io import atomic_write_text, config_hash

CONFIG_ENV = "VLPROMPT_CONFIG"  # the resolved config a job reads (set by the Snakefile)
CONFIGFILES_ENV = "VLPROMPT_CONFIGFILES"  # the config files given to snakemake, for rebuild hints
PARENT_ENV = "VLPROMPT_SNAKEMAKE"  # "<host>:<pid>" of the snakemake process that runs the job
CONTAINER_ENV = "VLPROMPT_CONTAINER"  # the image of --sdm apptainer, instead of containers/vlprompt.sif


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
            raise ConfigError(
                f"report.notes_file: {notes!r} does not exist (looked in {Path.cwd()} and "
                f"{Path(base_dir).resolve()}); write it, or remove the key from the config"
            )
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
    rebuild hints of corrupt artefacts) and the process to outlive none of (see :mod:`vlprompt.pipeline.watchdog`)."""
    return {
        CONFIG_ENV: config_path,
        CONFIGFILES_ENV: os.pathsep.join(str(c) for c in configfiles),
        PARENT_ENV: f"{socket.gethostname()}:{os.getpid()}",
    }


def source_first(basedir: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``PYTHONPATH`` with the checkout's ``src/`` first (unless it is on it already): jobs then import the code of
    the Snakefile's checkout in whichever environment runs them (the .venv, a conda environment, the container),
    and the commit a run records is the code it ran. Empty when ``basedir`` has no ``src/``."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    src = str(Path(basedir) / "src")
    current = env.get("PYTHONPATH", "")
    if not Path(src).is_dir() or src in current.split(os.pathsep):
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [src, current]))}


def container_image(environ: Mapping[str, str] | None = None) -> str:
    """The image every rule runs in under ``--software-deployment-method apptainer`` (docs/containers.md):
    ``$VLPROMPT_CONTAINER`` (a path, or docker://<registry>/<image>@sha256:<digest>), else the one
    ``containers/vlprompt.def`` builds."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    return env.get(CONTAINER_ENV) or "containers/vlprompt.sif"
