"""The cluster's state as SLURM reports it: partitions, their nodes (CPUs, memory, GPUs) and limits, whether
accounting answers; parsed from ``sinfo``, ``scontrol show partition``/``show config`` and one ``sacct`` probe."""

from __future__ import annotations

import getpass
import math
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace


class ClusterError(Exception):
    """The cluster or the plan could not be read; the message says which command failed and why."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    state: str = "idle"


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    default: bool = False
    max_minutes: int | None = None  # the partition's MaxTime; None: no limit
    up: bool = True

    @property
    def gpus(self) -> int:
        return max((n.gpus for n in self.nodes), default=0)

    def largest(self, gpus: int = 0) -> Node | None:
        """The node with the most CPUs (then memory) among those with at least ``gpus`` GPUs."""
        nodes = [n for n in self.nodes if n.gpus >= gpus]
        return max(nodes, key=lambda n: (n.cpus, n.mem_mb), default=None)

    def fits(self, cpus: int, mem_mb: int, gpus: int, minutes: int | None) -> bool:
        if self.max_minutes is not None and minutes is not None and minutes > self.max_minutes:
            return False
        return any(n.cpus >= cpus and n.mem_mb >= mem_mb and n.gpus >= gpus for n in self.nodes)

    def describe(self) -> str:
        cpus = sorted({n.cpus for n in self.nodes})
        mem = sorted({n.mem_mb for n in self.nodes})
        span = lambda v, unit: f"{v[0]}{unit}" if len(v) == 1 else f"{v[0]}-{v[-1]}{unit}"  # noqa: E731
        gpus = f"up to {self.gpus} GPU{'s' * (self.gpus > 1)} a node" if self.gpus else "no GPU"
        limit = "no time limit" if self.max_minutes is None else f"time limit {self.max_minutes} min"
        return (
            f"{self.name}{' (default)' if self.default else ''}: {len(self.nodes)} node"
            f"{'s' * (len(self.nodes) != 1)}, {span(cpus, ' CPUs') if cpus else '-'}, "
            f"{span(mem, ' MB') if mem else '-'}, {gpus}, {limit}{'' if self.up else ', DOWN'}"
        )


@dataclass(frozen=True)
class Cluster:
    partitions: dict[str, Partition]
    accounting: str = "accounting_storage/none"  # AccountingStorageType
    sacct_error: str | None = None  # what sacct answered when it failed; None when it answers
    min_job_age: int | None = None  # seconds a finished job stays visible to squeue
    default_account: str | None = None

    @property
    def has_accounting(self) -> bool:
        return not self.accounting.endswith("/none")

    @property
    def default_partition(self) -> Partition | None:
        return next((p for p in self.partitions.values() if p.default), None)

    def partition(self, name: str | None) -> Partition | None:
        return self.default_partition if name is None else self.partitions.get(name)


def slurm_minutes(text: str) -> int | None:
    """A SLURM time ("30", "30:00", "2:00:00", "1-12", "1-00:00:00", "UNLIMITED") in minutes; None: no limit."""
    t = text.strip().lower()
    if t in ("", "unlimited", "infinite", "none", "n/a"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        h, m, s = ([int(x) for x in t.split(":")] + [0, 0])[:3]
    else:
        parts = [int(x) for x in t.split(":")]
        h, m, s = {1: lambda: (0, parts[0], 0), 2: lambda: (0, parts[0], parts[1]), 3: lambda: tuple(parts)}[
            len(parts)
        ]()
    return days * 1440 + h * 60 + m + math.ceil(s / 60)


def gres_gpus(text: str) -> int:
    """GPUs in a gres string: "gpu:2", "gpu:a100:4(S:0-1)", "gpu:1,mps:100" -> 2, 4, 1; "(null)" -> 0."""
    count = 0
    for item in re.sub(r"\([^)]*\)", "", text).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            count += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return count


def parse_sinfo(text: str) -> tuple[dict[str, list[Node]], set[str]]:
    """``sinfo -h -N -o '%N|%P|%c|%m|%G|%t'``: the nodes of each partition, and the default partition(s)."""
    nodes: dict[str, list[Node]] = {}
    defaults = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        name, part, cpus, mem, gres, state = line.strip().split("|")[:6]
        if part.endswith("*"):
            part = part[:-1]
            defaults.add(part)
        nodes.setdefault(part, []).append(
            Node(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), gres_gpus(gres), state)
        )
    return nodes, defaults


def parse_key_values(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` line: Key=Value pairs separated by spaces."""
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: "Key = value" lines."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def _limit(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def build_cluster(
    sinfo: str, partitions: str, config: str, sacct_error: str | None, default_account: str | None = None
) -> Cluster:
    """A Cluster from the text of ``sinfo -h -N -o '%N|%P|%c|%m|%G|%t'``, ``scontrol show partition -o`` and
    ``scontrol show config``. A partition's MaxCPUsPerNode and MaxMemPerNode cap its nodes."""
    nodes, defaults = parse_sinfo(sinfo)
    conf = parse_config(config)
    parts = {}
    for line in partitions.splitlines():
        kv = parse_key_values(line)
        name = kv.get("PartitionName")
        if not name:
            continue
        max_cpus, max_mem = _limit(kv.get("MaxCPUsPerNode")), _limit(kv.get("MaxMemPerNode"))
        capped = tuple(
            replace(n, cpus=min(n.cpus, max_cpus or n.cpus), mem_mb=min(n.mem_mb, max_mem or n.mem_mb))
            for n in nodes.get(name, [])
        )
        parts[name] = Partition(
            name,
            capped,
            default=kv.get("Default") == "YES" or name in defaults,
            max_minutes=slurm_minutes(kv.get("MaxTime", "UNLIMITED")),
            up=kv.get("State", "UP") == "UP",
        )
    for name, ns in nodes.items():  # a partition scontrol did not list (hidden): what sinfo says
        parts.setdefault(name, Partition(name, tuple(ns), default=name in defaults))
    age = re.match(r"(\d+)", conf.get("MinJobAge", ""))
    return Cluster(
        parts,
        conf.get("AccountingStorageType", "accounting_storage/none"),
        sacct_error,
        int(age.group(1)) if age else None,
        default_account,
    )


def _run(cmd: list[str]) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{cmd[0]}: no answer in 60 s"
    return proc.returncode, proc.stdout, proc.stderr


def query_cluster(run=_run, which=shutil.which) -> Cluster:
    """Ask the cluster once: its partitions and nodes, its config, whether sacct answers."""
    if which("sinfo") is None:
        raise ClusterError(
            "sinfo not found: run cluster-check on a node of the cluster (a login node), with SLURM's commands on PATH"
        )

    def ask(cmd):
        rc, out, err = run(cmd)
        if rc != 0:
            raise ClusterError(f"`{shlex.join(cmd)}` failed (exit {rc}): {(err or out).strip()}")
        return out

    sinfo = ask(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G|%t"])
    partitions = ask(["scontrol", "show", "partition", "-o"])
    config = ask(["scontrol", "show", "config"])
    sacct_error: str | None
    if which("sacct") is None:
        sacct_error = "sacct is not installed"
    else:
        rc, out, err = run(["sacct", "-X", "-n", "-o", "JobID", "-S", "now"])
        sacct_error = (err.strip().splitlines() or [f"exit {rc}"])[0] if rc != 0 else None
    account: str | None = None
    if sacct_error is None and not parse_config(config).get("AccountingStorageType", "").endswith("/none"):
        rc, out, _ = run(["sacctmgr", "-n", "-P", "show", "user", getpass.getuser(), "format=DefaultAccount"])
        account = out.strip().splitlines()[0] if rc == 0 and out.strip() else None
    return build_cluster(sinfo, partitions, config, sacct_error, account)
