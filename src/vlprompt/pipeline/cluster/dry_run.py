"""The experiment as a profile would run it: the settings snakemake derives from the profile and the arguments,
and the jobs of a dry run of the whole DAG (``snakemake -n --forceall``), with their group jobs."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from vlprompt.pipeline.cluster.state import ClusterError

# resources whose value is a size printed twice by a dry run (mem_mb=4000, mem=4 GB): only the *_mb ones count
_SIZE_ALIASES = {"mem", "disk", "mem_mib", "disk_mib"}


@dataclass
class PlannedJob:
    rule: str
    block: int | None = None  # which group job of the dry run it belongs to; None: a SLURM job of its own
    group: str | None = None
    resources: dict = field(default_factory=dict)
    threads: int = 1
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


def _value(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def parse_dry_run(text: str) -> list[PlannedJob]:
    """The jobs a dry run (``snakemake -n``) prints, in its group jobs ("Group job <name> (...):" followed by
    indented members). Rules that run on the submitting host (localrules, ``all``) are left out."""
    jobs: list[PlannedJob] = []
    block = group = None
    blocks = 0
    local = False
    for line in text.splitlines():
        if m := re.search(r"\bGroup job (\S+) \(", line):
            block, group, blocks = blocks, m.group(1), blocks + 1
        elif m := re.match(r"( *)(local)?rule (\w+):$", line):
            indented = bool(m.group(1))
            if not indented:
                block = group = None
            local = bool(m.group(2)) or m.group(3) == "all"
            if not local:
                jobs.append(PlannedJob(m.group(3), block, group))
        elif jobs and not local and (m := re.match(r" +(input|output|resources|threads): (.*)$", line)):
            key, value = m.groups()
            if key == "resources":
                pairs = (kv.split("=", 1) for kv in value.split(", ") if "=" in kv)
                jobs[-1].resources = {k: _value(v) for k, v in pairs if v != "<TBD>" and k not in _SIZE_ALIASES}
            elif key == "threads":
                jobs[-1].threads = int(value)
            else:
                setattr(jobs[-1], key + "s", tuple(value.split(", ")))
    return jobs


@dataclass
class Settings:
    """What snakemake will use besides the rules: the profile(s) plus the snakemake arguments given."""

    profiles: list[str]
    args: list[str] = field(default_factory=list)
    executor: str = "slurm"
    status_command: str | None = None  # None: the plugin's default (sacct where the command exists)
    init_seconds: int = 40  # --slurm-init-seconds-before-status-checks
    set_resources: dict[str, dict[str, str]] = field(default_factory=dict)  # raw values, as snakemake parses
    resources: dict[str, str] = field(default_factory=dict)  # --resources
    group_components: dict[str, int] = field(default_factory=dict)
    cores: int | None = None


def read_settings(profiles: list[str], args: list[str]) -> Settings:
    """The settings snakemake derives from ``--profile <each> <args>``, read with snakemake's own parser."""
    from snakemake.cli import parse_args

    argv = [a for p in profiles for a in ("--profile", p)] + list(args)
    with contextlib.redirect_stderr(io.StringIO()):  # "Using profile ..."
        try:
            _, ns = parse_args(argv)
        except SystemExit as err:
            raise ClusterError(f"snakemake does not accept `{shlex.join(argv)}`") from err

    def plugin(name, default):
        value = getattr(ns, f"slurm_{name}", default)
        return default if value is None or type(value).__name__ == "_MISSING_TYPE" else value

    def raw(resources) -> dict[str, str]:
        return {k: str(v.raw) for k, v in (resources or {}).items()}

    return Settings(
        profiles=list(profiles),
        args=list(args),
        executor=ns.executor or "local",
        status_command=plugin("status_command", None),
        init_seconds=int(plugin("init_seconds_before_status_checks", 40)),
        set_resources={rule: raw(res) for rule, res in (ns.set_resources or {}).items()},
        resources=raw(ns.resources),
        group_components=dict(ns.group_components or {}),
        cores=ns.cores if isinstance(ns.cores, int) else None,
    )


def plan(settings: Settings, cwd: str | None = None) -> list[PlannedJob]:
    """Every job of the experiment as the profile plans it: a dry run of the whole DAG (``-n --forceall``)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall"]
    cmd += [a for p in settings.profiles for a in ("--profile", p)] + settings.args
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise ClusterError(
            f"the dry run `{shlex.join(cmd[cmd.index('-n') :])}` failed:\n{(proc.stderr or proc.stdout)[-3000:]}"
        )
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    if not jobs and "Nothing to be done" not in proc.stdout + proc.stderr:
        raise ClusterError("the dry run printed no jobs: is this the project's folder (its Snakefile)?")
    return jobs
