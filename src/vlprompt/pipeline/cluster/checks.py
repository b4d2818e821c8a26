"""The checks: what of the plan does not fit the cluster, and the snakemake flags that fix it (the status command,
per-rule resources, ``--cores``, ``--resources mem_mb``, ``--group-components``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace

from vlprompt.pipeline.cluster.dry_run import PlannedJob, Settings
from vlprompt.pipeline.cluster.resources import Request, job_request, largest_request, requests
from vlprompt.pipeline.cluster.state import Cluster


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
            resources = {**settings.resources, "mem_mb": str(self.mem_mb)}
            out += ["--resources", *(f"{k}={v}" for k, v in resources.items())]
        if self.group_components:
            components = {**settings.group_components, **self.group_components}
            out += ["--group-components", *(f"{k}={v}" for k, v in components.items())]
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
        req = largest_request([job_request(j) for j in _apply(jobs, fixes.set_resources) if j.rule == rule])
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
    for name in sorted({r.group for r in groups if r.group}):
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
