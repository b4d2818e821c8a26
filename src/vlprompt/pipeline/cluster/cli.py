"""The report ``vlprompt cluster-check`` prints, and the command itself."""

from __future__ import annotations

import re
import shlex
import sys

from vlprompt.pipeline.cluster.checks import Report, check
from vlprompt.pipeline.cluster.dry_run import Settings, plan, read_settings
from vlprompt.pipeline.cluster.resources import Request, largest_request
from vlprompt.pipeline.cluster.state import Cluster, ClusterError, query_cluster


def table(reqs: list[Request], cluster: Cluster) -> list[str]:
    """One line per kind of SLURM job (a rule, or a group): how many, and the largest request."""
    kinds: dict[str, list[Request]] = {}
    for r in reqs:
        kinds.setdefault(r.kind, []).append(r)
    default = cluster.default_partition.name if cluster.default_partition else "-"
    lines = [f"  {'SLURM job':26s} {'count':>5s} {'CPUs':>5s} {'MB':>7s} {'minutes':>7s} {'GPUs':>4s}  partition"]
    for kind, rs in kinds.items():
        r = largest_request(rs)
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
