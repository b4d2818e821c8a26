"""Preflight for a SLURM run: ``vlprompt cluster-check --profile workflow/profiles/slurm [-- snakemake args]``.

It asks the cluster once (``sinfo``, ``scontrol show partition`` and ``show config``, one ``sacct`` probe) and
plans the experiment as the profile would run it (a dry run of every job, ``snakemake -n --forceall``), then
compares what each SLURM job will ask for with what the cluster has. A SLURM job is a job of its own or a
group job; a group job's request is computed as Snakemake computes it (its members in rounds that fit
``--cores`` and ``--resources``: CPUs and memory of the widest round, run times of the rounds added up).

What will not fit, and the flag that fixes it:

- the executor polls ``sacct`` for job states whenever the command exists; without an accounting database it
  answers "accounting storage is disabled" and Snakemake waits for states that never come:
  ``--slurm-status-command squeue`` (and a first status check early enough for ``MinJobAge``);
- a job that asks for a GPU where its partition has none: the partition that has one
  (``<rule>:slurm_partition=...``), else ``<rule>:gpu=0``, which runs it on the CPUs;
- a job larger than the largest node of its partition: ``<rule>:cpus_per_task``, ``mem_mb`` or ``runtime``
  lowered to what the node and the partition's time limit allow;
- a group job larger than the largest node: ``--cores`` / ``--resources mem_mb=`` (fewer members side by
  side), and past the time limit fewer members per group (``--group-components``).

Snakemake replaces a whole map given on the command line (``--set-resources``, ``--resources``,
``--group-components``) rather than merging it with the profile's, so the flags printed here carry the entries
the profile and the given snakemake arguments already hold: appended last, they extend and never drop one.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace

# resources whose value is a size printed twice by a dry run (mem_mb=4000, mem=4 GB): only the *_mb ones count
_SIZE_ALIASES = {"mem", "disk", "mem_mib", "disk_mib"}


class ClusterError(Exception):
    """The cluster or the plan could not be read; the message says which command failed and why."""


# --- the cluster --------------------------------------------------------------------------------------------


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
    if which("sacct") is None:
        sacct_error = "sacct is not installed"
    else:
        rc, out, err = run(["sacct", "-X", "-n", "-o", "JobID", "-S", "now"])
        sacct_error = (err.strip().splitlines() or [f"exit {rc}"])[0] if rc != 0 else None
    account = None
    if sacct_error is None and not parse_config(config).get("AccountingStorageType", "").endswith("/none"):
        rc, out, _ = run(["sacctmgr", "-n", "-P", "show", "user", getpass.getuser(), "format=DefaultAccount"])
        account = out.strip().splitlines()[0] if rc == 0 and out.strip() else None
    return build_cluster(sinfo, partitions, config, sacct_error, account)


# --- the plan -----------------------------------------------------------------------------------------------


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


# --- what each SLURM job asks for ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one SLURM job asks sbatch for."""

    kind: str  # the rule, or "group <name>"
    group: str | None
    rules: tuple[str, ...]
    cpus: int
    mem_mb: int
    minutes: int | None
    gpus: int
    partition: str | None
    members: int = 1


def _gpus(res: dict) -> int:
    gpus = res.get("gpu") if isinstance(res.get("gpu"), int) else 0
    return gpus or (gres_gpus(res["gres"]) if isinstance(res.get("gres"), str) else 0)


def _cpus(res: dict, threads: int) -> int:
    cpus = res.get("cpus_per_task")
    return max(1, cpus) if isinstance(cpus, int) and cpus > 0 else threads


def _mem(res: dict, cpus: int) -> int:
    if isinstance(res.get("mem_mb_per_cpu"), int):
        return res["mem_mb_per_cpu"] * cpus
    return res.get("mem_mb", 0) if isinstance(res.get("mem_mb"), int) else 0


def job_request(job: PlannedJob) -> Request:
    res = job.resources
    cpus = _cpus(res, job.threads)
    minutes = res.get("runtime") if isinstance(res.get("runtime"), int) else None
    part = res.get("slurm_partition")
    return Request(
        job.rule,
        None,
        (job.rule,),
        cpus,
        _mem(res, cpus),
        minutes,
        _gpus(res),
        part.strip("'\"") if isinstance(part, str) else None,
    )


def _levels(members: list[PlannedJob]) -> list[list[PlannedJob]]:
    """The members in toposort levels: a member's level is one more than that of any member it reads from."""
    producer = {out: i for i, j in enumerate(members) for out in j.outputs}
    level: dict[int, int] = {}

    def depth(i: int, seen=()) -> int:
        if i not in level:
            ups = [producer[f] for f in members[i].inputs if f in producer and producer[f] not in seen]
            level[i] = 1 + max((depth(u, (*seen, i)) for u in ups), default=-1)
        return level[i]

    out: dict[int, list[PlannedJob]] = {}
    for i, job in enumerate(members):
        out.setdefault(depth(i), []).append(job)
    return [out[k] for k in sorted(out)]


def group_request(name: str, members: list[PlannedJob], cores: int | None, limits: dict[str, int]) -> Request:
    """A group job's request, computed by Snakemake's own GroupResources.basic_layered (as for submission)."""
    from snakemake.resources import GroupResources, Resources

    class _Job:  # what basic_layered reads of a job
        pipe_group = None

        def __init__(self, job: PlannedJob):
            self.resources = {k: v for k, v in job.resources.items() if isinstance(v, int)}
            self.resources["_cores"] = job.threads
            for k in ("slurm_partition", "slurm_account"):
                if k in job.resources:
                    self.resources[k] = job.resources[k]

    constraints = Resources.from_mapping({**limits, **({"_cores": cores} if cores else {})})
    total = GroupResources.basic_layered(
        [[_Job(j) for j in level] for level in _levels(members)],
        constraints,
        run_local=False,
        additive_resources=["runtime"],
        sortby=["runtime"],
    )
    cpus = _cpus(total, total.get("_cores", 1))
    part = total.get("slurm_partition")
    return Request(
        f"group {name}",
        name,
        tuple(sorted({j.rule for j in members})),
        cpus,
        _mem(total, cpus),
        total.get("runtime"),
        _gpus(total),
        part.strip("'\"") if isinstance(part, str) else None,
        len(members),
    )


def components(members: list[PlannedJob]) -> list[list[PlannedJob]]:
    """The connected components of a group job's members (jobs linked by a file one writes and one reads)."""
    parent = list(range(len(members)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {out: i for i, j in enumerate(members) for out in j.outputs}
    for i, job in enumerate(members):
        for f in job.inputs:
            if f in producer:
                parent[root(i)] = root(producer[f])
    comps: dict[int, list[PlannedJob]] = {}
    for i, job in enumerate(members):
        comps.setdefault(root(i), []).append(job)
    return list(comps.values())


def requests(
    jobs: list[PlannedJob],
    cores: int | None = None,
    limits: dict[str, int] | None = None,
    group_components: dict[str, int] | None = None,
) -> list[Request]:
    """Every SLURM job of the plan: one per ungrouped job, one per group job. ``group_components`` re-splits
    the dry run's group jobs into group jobs of at most that many components (to try a smaller setting)."""
    out = [job_request(j) for j in jobs if j.block is None]
    blocks: dict[int, list[PlannedJob]] = {}
    for job in jobs:
        if job.block is not None:
            blocks.setdefault(job.block, []).append(job)
    for members in blocks.values():
        name = members[0].group
        k = (group_components or {}).get(name)
        chunks = [members]
        if k:
            comps = components(members)
            chunks = [[j for c in comps[i : i + k] for j in c] for i in range(0, len(comps), k)]
        out += [group_request(name, chunk, cores, limits or {}) for chunk in chunks]
    return out


# --- the settings a run will use ----------------------------------------------------------------------------


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


# --- the check ----------------------------------------------------------------------------------------------


@dataclass
class Fixes:
    status_command: str | None = None
    init_seconds: int | None = None
    set_resources: dict[str, dict[str, object]] = field(default_factory=dict)
    cores: int | None = None
    mem_mb: int | None = None  # --resources mem_mb: the memory of a group job
    group_components: dict[str, int] = field(default_factory=dict)

    def set(self, rule: str, key: str, value) -> str:
        self.set_resources.setdefault(rule, {})[key] = value
        return f"{rule}:{key}={value}"

    def flags(self, settings: Settings) -> list[str]:
        """The snakemake flags to append: maps merged with the profile's and the given arguments' entries."""
        out: list[str] = []
        if self.status_command:
            out += ["--slurm-status-command", self.status_command]
        if self.init_seconds:
            out += ["--slurm-init-seconds-before-status-checks", str(self.init_seconds)]
        if self.set_resources:
            merged = {rule: dict(res) for rule, res in settings.set_resources.items()}
            for rule, res in self.set_resources.items():
                merged.setdefault(rule, {}).update({k: str(v) for k, v in res.items()})
            out += ["--set-resources", *(f"{r}:{k}={v}" for r, res in merged.items() for k, v in res.items())]
        if self.cores:
            out += ["--cores", str(self.cores)]
        if self.mem_mb:
            merged = {**settings.resources, "mem_mb": str(self.mem_mb)}
            out += ["--resources", *(f"{k}={v}" for k, v in merged.items())]
        if self.group_components:
            merged = {**settings.group_components, **self.group_components}
            out += ["--group-components", *(f"{k}={v}" for k, v in merged.items())]
        return out


@dataclass
class Finding:
    problem: str
    fix: str | None = None  # the flag or entry that fixes it; None: left to the user (see the problem)


@dataclass
class Report:
    cluster: Cluster
    settings: Settings
    before: list[Request]
    after: list[Request]
    findings: list[Finding]
    fixes: Fixes
    notes: list[str]

    @property
    def unfixed(self) -> list[Finding]:
        return [f for f in self.findings if f.fix is None]


def _apply(jobs: list[PlannedJob], set_resources: dict[str, dict[str, object]]) -> list[PlannedJob]:
    return [replace(j, resources={**j.resources, **set_resources.get(j.rule, {})}) for j in jobs]


def _largest(reqs: list[Request]) -> Request:
    return max(reqs, key=lambda r: (r.gpus, r.cpus, r.mem_mb, r.minutes or 0))


def _mem_limit(settings: Settings) -> dict[str, int]:
    mem = settings.resources.get("mem_mb")
    return {"mem_mb": int(mem)} if mem and mem.isdigit() else {}


def _job_states_and_account(jobs, cluster, settings, fixes, which) -> tuple[list[Finding], list[str]]:
    findings, notes = [], []
    status = settings.status_command or ("sacct" if which("sacct") else "squeue")
    if status == "sacct" and cluster.sacct_error:
        fixes.status_command = status = "squeue"
        findings.append(
            Finding(
                f'job states: the executor asks sacct, which answers "{cluster.sacct_error}"; '
                "Snakemake would wait for states that never come",
                "--slurm-status-command squeue",
            )
        )
    if status == "squeue" and cluster.min_job_age is not None and cluster.min_job_age < 3 * settings.init_seconds:
        fixes.init_seconds = max(1, cluster.min_job_age // 3)
        findings.append(
            Finding(
                f"job states: squeue forgets a finished job after MinJobAge = {cluster.min_job_age}"
                f" s, before the executor's first look after {settings.init_seconds} s could be "
                "repeated",
                f"--slurm-init-seconds-before-status-checks {fixes.init_seconds}",
            )
        )
    if not any("slurm_account" in j.resources for j in jobs):
        if not cluster.has_accounting:
            # plugin 2.8.0 declares --slurm-no-account but never reads it; a slurm_account only gets another
            # warning (its check through sacctmgr and sshare finds no accounts without the database)
            notes.append(
                "account: no accounting database, so jobs go without one; the executor still tries to "
                'guess one through sacct and says "Unable to guess SLURM account. Trying to proceed '
                'without." (harmless)'
            )
        else:
            mine = f" (yours by default: {cluster.default_account})" if cluster.default_account else ""
            notes.append(
                f"account: set slurm_account under default-resources in the profile{mine}; without it "
                "the executor guesses one through sacct, with a warning"
            )
    return findings, notes


def _each_rule(jobs, cluster, fixes) -> list[Finding]:
    """Each rule's largest job on its own (a group's members too): GPUs, then the largest node and the time
    limit of its partition."""
    findings = []
    for rule in sorted({j.rule for j in jobs}):
        req = _largest([job_request(j) for j in _apply(jobs, fixes.set_resources) if j.rule == rule])
        part = cluster.partition(req.partition)
        if part is None:
            where = f"partition {req.partition!r}" if req.partition else "the cluster's default partition"
            findings.append(
                Finding(
                    f"{rule}: {where} does not exist (partitions: "
                    f"{', '.join(cluster.partitions) or 'none'}); set slurm_partition"
                )
            )
            continue
        gpus = req.gpus
        if gpus and part.gpus < gpus:
            other = [p for p in cluster.partitions.values() if p.up and p.gpus >= gpus]
            if other:
                fix = fixes.set(rule, "slurm_partition", other[0].name)
                findings.append(
                    Finding(
                        f"{rule}: asks for {gpus} GPU, partition {part.name} has none; partition {other[0].name} has",
                        fix,
                    )
                )
                part = other[0]
            else:
                fix = fixes.set(rule, "gpu", 0)
                findings.append(
                    Finding(
                        f"{rule}: asks for {gpus} GPU, no partition has one; without the request it runs on the CPUs",
                        fix,
                    )
                )
                gpus = 0
        node = part.largest(gpus)
        if node is None:
            findings.append(Finding(f"{rule}: partition {part.name} has no node"))
            continue
        if req.cpus > node.cpus:
            findings.append(
                Finding(
                    f"{rule}: asks for {req.cpus} CPUs, the largest node of {part.name} has {node.cpus}",
                    fixes.set(rule, "cpus_per_task", node.cpus),
                )
            )
        if req.mem_mb > node.mem_mb:
            findings.append(
                Finding(
                    f"{rule}: asks for {req.mem_mb} MB, the largest node of {part.name} has {node.mem_mb} MB",
                    fixes.set(rule, "mem_mb", node.mem_mb),
                )
            )
        if part.max_minutes is not None and (req.minutes or 0) > part.max_minutes:
            findings.append(
                Finding(
                    f"{rule}: asks for {req.minutes} min, partition {part.name} allows "
                    f"{part.max_minutes} (a job still running then is stopped)",
                    fixes.set(rule, "runtime", part.max_minutes),
                )
            )
    return findings


def _group_jobs(jobs, cluster, settings, fixes, limits) -> list[Finding]:
    """Group jobs: fewer members side by side where the largest node is too small (--cores, --resources
    mem_mb), fewer members per group where a group job outlasts the time limit (--group-components).
    ``limits`` (the --resources a group job must fit) gets the memory cap."""
    findings = []
    cores = settings.cores
    groups = [r for r in requests(jobs, cores, limits) if r.group]
    for attr, unit in (("cpus", "CPUs"), ("mem_mb", "MB")):
        too_big = [
            (r, node)
            for r in groups
            if (part := cluster.partition(r.partition))
            and (node := part.largest(r.gpus))
            and getattr(r, attr) > getattr(node, attr)
        ]
        if not too_big:
            continue
        cap = min(getattr(node, attr) for _, node in too_big)
        r = max((r for r, _ in too_big), key=lambda r: getattr(r, attr))
        if attr == "cpus":
            fixes.cores = cores = min(cap, cores or cap)
            fix = f"--cores {cores}"
        else:
            fixes.mem_mb = cap
            limits["mem_mb"] = cap
            fix = f"--resources mem_mb={cap}"
        findings.append(
            Finding(
                f"{r.kind}: a group job of {r.members} members asks for {getattr(r, attr)} {unit}, "
                f"the largest node has {cap}: fewer members run side by side",
                fix,
            )
        )
        groups = [r for r in requests(jobs, cores, limits) if r.group]
    for name in sorted({r.group for r in groups}):
        slow = [
            r
            for r in groups
            if r.group == name
            and (p := cluster.partition(r.partition))
            and p.max_minutes is not None
            and (r.minutes or 0) > p.max_minutes
        ]
        if not slow:
            continue
        worst = max(slow, key=lambda r: r.minutes or 0)
        part = cluster.partition(worst.partition)
        k = settings.group_components.get(name, 1) - 1
        while k >= 1 and any(
            r.group == name and (r.minutes or 0) > part.max_minutes for r in requests(jobs, cores, limits, {name: k})
        ):
            k -= 1
        problem = (
            f"group {name}: a group job takes {worst.minutes} min in rounds, partition {part.name} allows "
            f"{part.max_minutes}"
        )
        if k >= 1:
            fixes.group_components[name] = k
            findings.append(Finding(problem, f"--group-components {name}={k}"))
        else:
            findings.append(Finding(problem + "; even one component is too long: lower its rules' runtime"))
    return findings


def check(jobs: list[PlannedJob], cluster: Cluster, settings: Settings, which=shutil.which) -> Report:
    """Compare the plan with the cluster; return what does not fit and the fixes."""
    fixes = Fixes()
    limits = _mem_limit(settings)
    before = requests(jobs, settings.cores, limits)
    findings, notes = _job_states_and_account(jobs, cluster, settings, fixes, which)
    findings += _each_rule(jobs, cluster, fixes)
    fixed_jobs = _apply(jobs, fixes.set_resources)
    findings += _group_jobs(fixed_jobs, cluster, settings, fixes, limits)

    after = requests(fixed_jobs, fixes.cores or settings.cores, limits, fixes.group_components or None)
    for r in after:  # what is left after the fixes, where no finding above names it
        part = cluster.partition(r.partition)
        if part is None:
            continue
        if not part.fits(r.cpus, r.mem_mb, r.gpus, r.minutes) and not any(
            f.fix is None and r.kind in f.problem for f in findings
        ):
            findings.append(
                Finding(
                    f"{r.kind}: {r.cpus} CPUs, {r.mem_mb} MB, {r.gpus} GPU, {r.minutes} min "
                    f"still fits no node of partition {part.name}"
                )
            )
        if not part.up:
            notes.append(f"partition {part.name} is not up: its jobs wait until it is")
    return Report(cluster, settings, before, after, findings, fixes, sorted(set(notes)))


# --- output -------------------------------------------------------------------------------------------------


def table(reqs: list[Request], cluster: Cluster) -> list[str]:
    """One line per kind of SLURM job (a rule, or a group): how many, and the largest request."""
    kinds: dict[str, list[Request]] = {}
    for r in reqs:
        kinds.setdefault(r.kind, []).append(r)
    default = cluster.default_partition.name if cluster.default_partition else "-"
    lines = [f"  {'SLURM job':26s} {'count':>5s} {'CPUs':>5s} {'MB':>7s} {'minutes':>7s} {'GPUs':>4s}  partition"]
    for kind, rs in kinds.items():
        r = _largest(rs)
        lines.append(
            f"  {kind:26s} {len(rs):5d} {r.cpus:5d} {r.mem_mb:7d} {r.minutes or 0:7d} {r.gpus:4d}  "
            f"{r.partition or default}"
        )
    return lines


def _command(settings: Settings, flags: list[str]) -> str:
    profiles = [a for p in settings.profiles for a in ("--profile", p)]
    return shlex.join(["snakemake", *profiles, *settings.args, *flags])


def render(report: Report) -> str:
    s, c = report.settings, report.cluster
    out = [
        f"vlprompt cluster-check: {' + '.join(s.profiles)}"
        + (f" with {shlex.join(s.args)}" if s.args else "")
        + f": {sum(r.members for r in report.before)} jobs in {len(report.before)} SLURM jobs"
    ]
    out.append("cluster:")
    out += [f"  partition {p.describe()}" for p in c.partitions.values()]
    out.append(
        f"  accounting: {c.accounting}"
        + (f" (sacct: {c.sacct_error})" if c.sacct_error else "")
        + (f"; finished jobs stay in squeue for {c.min_job_age} s (MinJobAge)" if c.min_job_age else "")
    )
    out.append("what the profile asks for (the largest job of each kind):")
    out += table(report.before, c)
    if not report.findings:
        out.append("everything fits: run")
    else:
        out.append("what does not fit, and the fix:")
        for f in report.findings:
            out.append(f"  - {f.problem}" + (f"\n      fix: {f.fix}" if f.fix else "\n      NOT FIXED"))
        if any(f.fix for f in report.findings):
            out.append("with the fixes:")
            out += table(report.after, c)
    out += [f"note: {n}" for n in report.notes]
    flags = report.fixes.flags(s)
    if report.findings:
        out.append("run:" if not report.unfixed else "run, once what is NOT FIXED is fixed:")
    out.append("  " + _command(s, flags))
    if flags:
        profiles = " ".join(f"--profile {shlex.quote(p)}" for p in s.profiles)
        extra = f" -- {shlex.join(s.args)}" if s.args else ""
        out.append(
            "(the same flags computed on the spot: snakemake "
            f"{profiles}{' ' + shlex.join(s.args) if s.args else ''} "
            f"$(python -m vlprompt cluster-check {profiles} --flags{extra}))"
        )
    return "\n".join(out)


def main(profiles: list[str], snakemake_args: list[str], flags_only: bool = False) -> int:
    """``vlprompt cluster-check``: print the report (``flags_only``: the report to stderr, the flags to stdout).
    Exit status 0 when everything fits after the fixes, 1 when something does not."""
    settings = read_settings(profiles, snakemake_args)
    if settings.executor != "slurm":
        raise ClusterError(
            f"the profile's executor is {settings.executor!r}, not slurm: cluster-check is for "
            "workflow/profiles/slurm and profiles built on it"
        )
    cluster = query_cluster()
    report = check(plan(settings), cluster, settings)
    text = render(report)
    if flags_only:
        print(text, file=sys.stderr)
        flags = report.fixes.flags(settings)
        if any(re.search(r"\s", f) for f in flags):
            print(
                "cluster-check: a value holds a space, which $(...) would split: run the command above instead",
                file=sys.stderr,
            )
        print(" ".join(flags))
    else:
        print(text)
    return 1 if report.unfixed else 0
