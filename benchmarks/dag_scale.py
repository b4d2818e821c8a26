"""The DAG at the size of a real study: planning time and memory, and the scheduler's time per job.

    python benchmarks/dag_scale.py plan [--config config/fewshot.yaml] [--steps 3] [--profile]
    python benchmarks/dag_scale.py schedule [--jobs 200] [--cores 2]
    python benchmarks/dag_scale.py submit [--jobs 300] [--max-queued N] [--log FILE] [-- SNAKEMAKE_FLAGS]

``plan`` writes a study config from ``--config`` with every registered method that fits its protocol (the schema has
no ``methods: all``; a method that reads unlabelled images gets ``unlabelled: train``, one that starts from a
multitask prompt gets the ImageNet variants as ``sources`` when they are not evaluated, else it is left out), and
times ``snakemake -n`` on it, and on the first 1/steps, 2/steps, ... of its datasets, printing jobs, seconds, peak
memory and seconds per thousand jobs (a figure that grows with the size is what grows faster than linearly).
``--profile`` adds cProfile's top functions of the largest plan.

``schedule`` times a local run of ``--jobs`` tiny pocket jobs (few-shot draws: one process each, about the cost of
the cheapest job of the DAG) under Snakemake, and the same command lines run by a plain process pool with the same
number of cores; the difference per job is what Snakemake's scheduler adds.

``submit`` measures the SLURM profile's submission rate: ``--jobs`` few-shot draws (their datasets prepared locally
first) through ``snakemake --profile workflow/profiles/slurm`` with the flags ``python -m vlprompt cluster-check
--flags`` prints (its group sizes), each job submitted held (``sbatch --hold`` through the rule's ``slurm_extra``:
nothing runs, so the figure is the submission alone and the cluster's other work is not disturbed); a wrapper
``sbatch`` first on the PATH records the time of every call. It prints the sbatch calls per second from the first
call to the last and from Snakemake's start, then cancels the held jobs (by their ids) and stops Snakemake. It needs
a running cluster (``sudo scripts/slurm/start_local_cluster.sh --gpus 0``). Held jobs never leave the queue, so the
profile's ``jobs`` (100) caps what one run submits; ``--max-queued N`` passes ``--jobs N`` to Snakemake for this run
only, to measure more. Flags after ``--`` go to Snakemake (``-- --scheduler greedy``); ``--log`` keeps its output.

Nothing is downloaded: the real datasets are planned, never prepared. Figures of a shared machine are noisy: say so
next to them (docs/performance.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
}


def study_config(path: Path) -> dict:
    """``path``'s experiment with every registered method that fits its protocol."""
    sys.path.insert(0, str(REPO / "src"))
    from vlprompt.data.registry import list_datasets
    from vlprompt.methods import get_method, list_methods

    cfg = yaml.safe_load(path.read_text())
    evaluated = set(cfg["datasets"]) | set(cfg.get("targets") or [])
    sources = [d for d in list_datasets("real") if d not in evaluated][:2]
    methods = []
    for name in list_methods():
        cls = get_method(name)
        if cls.reads_multitask_prompt and not sources:
            continue
        if cfg["protocol"] == "crossdataset" and not cls.supports_new_classes:
            continue
        methods.append(name)
    cfg["methods"] = methods
    if any(get_method(m).reads_unlabelled for m in methods):
        cfg["unlabelled"] = "train"
    if any(get_method(m).reads_multitask_prompt for m in methods):
        cfg["sources"] = sources
    cfg["stats"] = {**cfg.get("stats", {}), "methods": None}
    return cfg


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str, int]:
    """(wall seconds, peak resident MiB of the process, its output, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=cwd)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, out, proc.returncode


def count_jobs(out: str) -> int:
    match = re.search(r"^total\s+(\d+)", out, re.M)
    return int(match.group(1)) if match else 0


def plan(args) -> None:
    cfg = study_config(Path(args.config))
    work = Path(tempfile.mkdtemp(prefix="dag_scale_"))
    datasets = cfg["datasets"]
    print(
        f"# {args.config}: {len(cfg['methods'])} methods, {len(datasets)} datasets, shots {cfg['shots']}, "
        f"seeds {cfg['seeds']}, job_granularity {cfg['train']['job_granularity']}"
    )
    print(f"{'datasets':>8} {'jobs':>7} {'seconds':>8} {'peak MiB':>9} {'s / 1000 jobs':>14}")
    sizes = sorted({max(1, round(len(datasets) * k / args.steps)) for k in range(1, args.steps + 1)})
    for n in sizes:
        sub = {**cfg, "datasets": datasets[:n], "results_root": str(work / "results"), "data_root": str(work / "data")}
        path = work / f"study_{n}.yaml"
        path.write_text(yaml.safe_dump(sub, sort_keys=False))
        cmd = [*SNAKEMAKE, "-n", "-q", "rules", "-d", str(work), "--configfile", str(path)]
        if args.profile and n == sizes[-1]:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(work / "plan.prof"), *cmd[1:]]
        seconds, mib, out, rc = timed(cmd)
        if rc != 0:
            print(out[-3000:])
            raise SystemExit(f"snakemake -n failed on {path}")
        jobs = count_jobs(out)
        print(f"{n:>8} {jobs:>7} {seconds:>8.1f} {mib:>9.0f} {1000 * seconds / max(jobs, 1):>14.2f}", flush=True)
    if args.profile:
        import pstats

        stats = pstats.Stats(str(work / "plan.prof"))
        stats.sort_stats("cumulative").print_stats(r"vlprompt|snakemake/dag|snakemake/rules", 25)
    shutil.rmtree(work, ignore_errors=True)


DATASETS = ["pocket_dark", "pocket_noisy", "pocket_sketch", "pocket_blurry", "pocket_pixelated", "pocket_cluttered"]


def fewshot_draws(work: Path, jobs: int, cores: int) -> tuple[Path, dict, list[str]]:
    """A pocket experiment in ``work`` whose DAG is ``jobs`` few-shot draws, its datasets and their classes already
    built (not timed): (config path, validated config, the draws' target paths)."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "pocket_tiny.yaml").read_text())
    seeds = list(range(1, -(-jobs // len(DATASETS)) + 1))
    cfg.update(
        datasets=DATASETS, seeds=seeds, methods=["zeroshot"], shots=[2], results_root="results", data_root="data"
    )
    (work / "config").mkdir(parents=True)
    config = work / "config" / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    sys.path.insert(0, str(REPO / "src"))
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import validate

    full = validate(cfg)
    targets = [str(grid.fewshot_path(full, d, 2, s)) for d in DATASETS for s in seeds][:jobs]
    prepared = [str(grid.classes_path(full, d)) for d in DATASETS]
    _, _, out, rc = timed([*SNAKEMAKE, "--cores", str(cores), "-d", str(work), *prepared])
    if rc != 0:
        raise SystemExit(out[-3000:])
    return config, full, targets


def schedule(args) -> None:
    """Snakemake's time per job: the same few-shot draws under Snakemake and under a plain process pool."""
    work = Path(tempfile.mkdtemp(prefix="dag_sched_"))
    _, full, targets = fewshot_draws(work, args.jobs, args.cores)
    datasets = DATASETS
    from vlprompt.experiment import grid

    seconds, _, out, rc = timed([*SNAKEMAKE, "--cores", str(args.cores), "-d", str(work), *targets, "-q", "rules"])
    if rc != 0:
        raise SystemExit(out[-3000:])
    n = len(targets)
    print(f"# {n} few-shot jobs of {len(datasets)} pocket datasets, --cores {args.cores}")
    print(f"snakemake: {seconds:.1f} s ({seconds / n:.2f} s per job)", flush=True)
    # the rule's own command line (workflow/rules/data.smk, sample_fewshot), run by a pool of the same size into a
    # second folder, reading the config the Snakemake run resolved as its jobs do ($VLPROMPT_CONFIG: a planned
    # config, whose method names were checked at plan time; `--config FILE` would check them again in every job)
    from vlprompt.pipeline.workflow import CONFIG_ENV

    env = {**ENV, CONFIG_ENV: str(work / full["results_root"] / full["experiment"] / "config.json")}
    commands = []
    for target in targets:
        match = re.search(r"splits/[^/]+/shot(\d+)_seed(\d+)\.json", target)
        dataset = next(d for d in datasets if f"/{grid.dataset_key(full, d)}/" in target)
        out = work / "pool" / target
        out.parent.mkdir(parents=True, exist_ok=True)
        commands.append(
            f"python -m vlprompt fewshot --dataset {dataset} --key {grid.dataset_key(full, dataset)} "
            f"--shots {match.group(1)} --seed {match.group(2)} --out {out} > {out}.log 2>&1"
        )
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.cores) as pool:
        codes = list(pool.map(lambda c: subprocess.run(["bash", "-c", c], env=env, cwd=work).returncode, commands))
    plain = time.perf_counter() - t0
    assert not any(codes), "a plain few-shot draw failed"
    print(
        f"plain pool: {plain:.1f} s ({plain / n:.2f} s per job); scheduler overhead: "
        f"{(seconds - plain) / n * args.cores:.2f} core-s per job"
    )
    shutil.rmtree(work, ignore_errors=True)


SBATCH_WRAPPER = """#!/bin/sh
# records the time of every sbatch call and its answer (the job id), then answers as sbatch did
out=$({sbatch} "$@"); rc=$?
n=$(printf '%s ' "$@" | grep -o 'sample_fewshot:' | wc -l)
printf '%s %s %s\\n' "$(date +%s.%N)" "$out" "$n" >> {log}
printf '%s\\n' "$out"
exit $rc
"""


def submit(args) -> None:
    """The SLURM profile's submission rate: ``--jobs`` few-shot draws submitted held, every sbatch call timed."""
    sbatch = shutil.which("sbatch")
    if sbatch is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        raise SystemExit("no SLURM cluster answers: start one (sudo scripts/slurm/start_local_cluster.sh --gpus 0)")
    work = Path(tempfile.mkdtemp(prefix="dag_submit_"))
    _, _, targets = fewshot_draws(work, args.jobs, 2)
    log = work / "sbatch.log"
    (work / "bin").mkdir()
    wrapper = work / "bin" / "sbatch"
    wrapper.write_text(SBATCH_WRAPPER.format(sbatch=sbatch, log=log))
    wrapper.chmod(0o755)
    env = {**ENV, "PATH": f"{work / 'bin'}{os.pathsep}{ENV['PATH']}:/usr/sbin"}
    env.pop("SNAKEMAKE_PROFILE", None)
    profile = str(REPO / "workflow" / "profiles" / "slurm")
    held = ["--set-resources", "sample_fewshot:slurm_extra='--hold'"]
    check = subprocess.run(
        [sys.executable, "-m", "vlprompt", "cluster-check", "--profile", profile, "--flags", "--", "-d", str(work)]
        + held,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise SystemExit(f"cluster-check failed:\n{check.stderr[-3000:]}")
    flags = check.stdout.split()
    # the profile as it is: at most `jobs` (100) SLURM jobs queued at once, so the held jobs stop it there
    limit = args.max_queued or int(yaml.safe_load((Path(profile) / "config.yaml").read_text()).get("jobs", 100))
    extra = [*(["--jobs", str(args.max_queued)] if args.max_queued else []), *args.snakemake_args]
    cmd = [*SNAKEMAKE, "--profile", profile, *flags, *extra, "-d", str(work), *targets]
    if "--set-resources" not in flags:
        cmd[-len(targets) : -len(targets)] = held
    print("#", " ".join(cmd[len(SNAKEMAKE) :][: -len(targets)]), f"<{len(targets)} few-shot targets>", flush=True)
    # Snakemake's output goes to a file, never to a pipe read only at the end: it prints every submitted job
    # (about 1.5 KB each with the profile's printshellcmds), so after a few dozen jobs a pipe's 64 KiB buffer
    # is full, Snakemake blocks in its log handler, and the submission threads, which log too, block behind it.
    snakemake_log = work / "snakemake.out"
    t0 = time.time()
    with snakemake_log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=sink, stderr=subprocess.STDOUT, text=True)
    rows: list[list[str]] = []
    try:
        while time.time() < t0 + args.timeout and proc.poll() is None:
            rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
            if len(rows) >= limit or (rows and time.time() - float(rows[-1][0]) > args.idle):
                break
            time.sleep(1)
    finally:
        # the queue before Snakemake stops: on SIGINT it cancels the jobs it submitted
        queue = subprocess.run(["squeue", "-h", "-o", "%i %r"], capture_output=True, text=True).stdout.split("\n")
        held_ids = {line.split()[0] for line in queue if line.strip().endswith("JobHeldUser")}
        # SIGINT, not SIGTERM: on SIGTERM Snakemake waits for its jobs to end, which held jobs never do
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = snakemake_log.read_text(errors="replace")
        rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        ids = [r[1].split(";")[0] for r in rows if len(r) > 1 and r[1].split(";")[0].isdigit()]
        for i in range(0, len(ids), 100):
            subprocess.run(["scancel", *ids[i : i + 100]], capture_output=True)
    if args.log:
        Path(args.log).write_text(out)
    if not rows:
        raise SystemExit(f"nothing was submitted; snakemake said:\n{out[-3000:]}")
    times = [float(r[0]) - t0 for r in rows]
    n = len(times)
    members = sum(int(r[2]) for r in rows if len(r) > 2)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    pause = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
    print(
        f"# {n} SLURM jobs submitted ({members or 'an unknown number of'} few-shot draws in them; the profile's "
        f"limit {limit}), "
        f"{len(held_ids & set(ids))} seen held, then all cancelled; cluster-check's flags: {' '.join(flags)}"
    )
    print(f"sbatch calls, seconds from snakemake's start: first {times[0]:.1f}, last {times[-1]:.1f}")
    print(f"overall: {n / times[-1]:.2f} SLURM jobs/s from snakemake's start")
    if gaps:
        burst = times[pause + 1 :]
        rate = (len(burst) - 1) / (burst[-1] - burst[0]) if len(burst) > 1 and burst[-1] > burst[0] else float("nan")
        print(
            f"longest pause between calls: {gaps[pause]:.1f} s after call {pause + 1}; the {len(burst)} calls after "
            f"it: {rate:.1f} jobs/s (first to last: {(n - 1) / (times[-1] - times[0]):.2f} jobs/s)"
        )
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("plan")
    s.add_argument("--config", default=str(REPO / "config" / "fewshot.yaml"))
    s.add_argument("--steps", type=int, default=3, help="plan 1/steps, 2/steps, ... of the datasets")
    s.add_argument("--profile", action="store_true", help="cProfile the largest plan")
    s.set_defaults(fn=plan)
    s = sub.add_parser("schedule")
    s.add_argument("--jobs", type=int, default=200)
    s.add_argument("--cores", type=int, default=2)
    s.set_defaults(fn=schedule)
    s = sub.add_parser("submit")
    s.add_argument("--jobs", type=int, default=300)
    s.add_argument("--timeout", type=int, default=1800, help="stop waiting for the submissions after this long")
    s.add_argument("--idle", type=int, default=120, help="stop when no job was submitted for this long")
    s.add_argument(
        "--max-queued",
        type=int,
        default=0,
        help="snakemake --jobs for this run (the SLURM jobs queued at once; default: the profile's `jobs`), to "
        "measure more submissions than the profile's cap, which held jobs never leave",
    )
    s.add_argument("--log", help="write snakemake's output to this file")
    s.add_argument("snakemake_args", nargs="*", help="more snakemake flags after `--` (e.g. -- --scheduler greedy)")
    s.set_defaults(fn=submit)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
