"""What each SLURM job of a plan asks sbatch for: a job of its own, or a group job whose request is computed as
Snakemake computes it (members in rounds that fit ``--cores`` and ``--resources``)."""

from __future__ import annotations

from dataclasses import dataclass

from vlprompt.pipeline.cluster.dry_run import PlannedJob
from vlprompt.pipeline.cluster.state import gres_gpus


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
        assert name is not None, "a group job's members carry its name (parse_dry_run)"
        k = (group_components or {}).get(name)
        chunks = [members]
        if k:
            comps = components(members)
            chunks = [[j for c in comps[i : i + k] for j in c] for i in range(0, len(comps), k)]
        out += [group_request(name, chunk, cores, limits or {}) for chunk in chunks]
    return out


def largest_request(reqs: list[Request]) -> Request:
    """The largest of ``reqs``: most GPUs, then CPUs, memory and minutes."""
    return max(reqs, key=lambda r: (r.gpus, r.cpus, r.mem_mb, r.minutes or 0))
