"""The DAG at the size of a real study: planning time and memory, and the scheduler's time per job.

    python benchmarks/dag_scale.py plan [--config config/fewshot.yaml] [--steps 3] [--profile]
    python benchmarks/dag_scale.py schedule [--jobs 200] [--cores 2]

``plan`` writes a study config from ``--config`` with every registered method that fits its protocol (the schema has
no ``methods: all``; a method that reads unlabelled images gets ``unlabelled: train``, one that starts from a
multitask prompt gets the ImageNet variants as ``sources`` when they are not evaluated, else it is left out), and
times ``snakemake -n`` on it, and on the first 1/steps, 2/steps, ... of its datasets, printing jobs, seconds, peak
memory and seconds per thousand jobs (a figure that grows with the size is what grows faster than linearly).
``--profile`` adds cProfile's top functions of the largest plan.

``schedule`` times a local run of ``--jobs`` tiny pocket jobs (few-shot draws: one process each, about the cost of
the cheapest job of the DAG) under Snakemake, and the same command lines run by a plain process pool with the same
number of cores; the difference per job is what Snakemake's scheduler adds.

Nothing is downloaded: the real datasets are planned, never prepared. Figures of a shared machine are noisy: say so
next to them (docs/performance.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
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


def schedule(args) -> None:
    """Snakemake's time per job: the same few-shot draws under Snakemake and under a plain process pool."""
    work = Path(tempfile.mkdtemp(prefix="dag_sched_"))
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "pocket_tiny.yaml").read_text())
    datasets = ["pocket_dark", "pocket_noisy", "pocket_sketch", "pocket_blurry", "pocket_pixelated", "pocket_cluttered"]
    seeds = list(range(1, -(-args.jobs // len(datasets)) + 1))
    cfg.update(
        datasets=datasets, seeds=seeds, methods=["zeroshot"], shots=[2], results_root="results", data_root="data"
    )
    (work / "config").mkdir(parents=True)
    config = work / "config" / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    sys.path.insert(0, str(REPO / "src"))
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import validate

    full = validate(cfg)
    targets = [str(grid.fewshot_path(full, d, 2, s)) for d in datasets for s in seeds][: args.jobs]
    # the datasets and their classes first (not timed): what is left is one few-shot draw per job
    prepared = [str(grid.classes_path(full, d)) for d in datasets]
    seconds, _, out, rc = timed([*SNAKEMAKE, "--cores", str(args.cores), "-d", str(work), *prepared])
    if rc != 0:
        raise SystemExit(out[-3000:])
    seconds, _, out, rc = timed([*SNAKEMAKE, "--cores", str(args.cores), "-d", str(work), *targets, "-q", "rules"])
    if rc != 0:
        raise SystemExit(out[-3000:])
    n = len(targets)
    print(f"# {n} few-shot jobs of {len(datasets)} pocket datasets, --cores {args.cores}")
    print(f"snakemake: {seconds:.1f} s ({seconds / n:.2f} s per job)", flush=True)
    # the same command lines, run by a pool of the same size, into a second folder
    commands = []
    for target in targets:
        match = re.search(r"splits/[^/]+/shot(\d+)_seed(\d+)\.json", target)
        dataset = next(d for d in datasets if f"/{grid.dataset_key(full, d)}/" in target)
        commands.append(
            [
                sys.executable,
                "-m",
                "vlprompt",
                "fewshot",
                "--config",
                str(config),
                "--dataset",
                dataset,
                "--shots",
                match.group(1),
                "--seed",
                match.group(2),
                "--out",
                str(work / "pool" / target),
                "--quiet",
            ]
        )
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.cores) as pool:
        codes = list(pool.map(lambda c: subprocess.run(c, env=ENV, cwd=work, capture_output=True).returncode, commands))
    plain = time.perf_counter() - t0
    assert not any(codes), "a plain few-shot draw failed"
    print(
        f"plain pool: {plain:.1f} s ({plain / n:.2f} s per job); scheduler overhead: "
        f"{(seconds - plain) / n * args.cores:.2f} core-s per job"
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
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
