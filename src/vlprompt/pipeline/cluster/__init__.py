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

The package, one concern a module, each importing only those before it: ``state`` (what the cluster has),
``dry_run`` (the settings and the planned jobs), ``resources`` (what each SLURM job asks for), ``checks`` (what
does not fit, and the fixes), ``cli`` (the report and the command).
"""

from vlprompt.pipeline.cluster.checks import Finding, Fixes, Report, check
from vlprompt.pipeline.cluster.cli import main, render, table
from vlprompt.pipeline.cluster.dry_run import PlannedJob, Settings, parse_dry_run, plan, read_settings
from vlprompt.pipeline.cluster.resources import Request, components, group_request, job_request, requests
from vlprompt.pipeline.cluster.state import (
    Cluster,
    ClusterError,
    Node,
    Partition,
    build_cluster,
    gres_gpus,
    parse_config,
    parse_key_values,
    parse_sinfo,
    query_cluster,
    slurm_minutes,
)

__all__ = [
    "Cluster",
    "ClusterError",
    "Finding",
    "Fixes",
    "Node",
    "Partition",
    "PlannedJob",
    "Report",
    "Request",
    "Settings",
    "build_cluster",
    "check",
    "components",
    "gres_gpus",
    "group_request",
    "job_request",
    "main",
    "parse_config",
    "parse_dry_run",
    "parse_key_values",
    "parse_sinfo",
    "plan",
    "query_cluster",
    "read_settings",
    "render",
    "requests",
    "slurm_minutes",
    "table",
]
