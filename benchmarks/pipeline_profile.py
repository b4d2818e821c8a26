"""Where the default experiment's time goes: wall and CPU seconds by stage and by method.

Runs the experiment of ``config/config.yaml`` (or ``--config``) from nothing, in a temporary folder (its
``data_root``, ``results_root`` and ``reports_root`` are moved there, so nothing is written at the repository's DAG
paths), with ``snakemake --cores N``, then reads what every job recorded:

- Snakemake's benchmark file of each job (``results/<experiment>/benchmarks/...tsv``: wall ``s`` and ``cpu_time``
  of the job's whole process tree), summed by stage: data generation (``prepare``, ``split``), extraction
  (``features``), training (``train``, ``multitask``), evaluation (``transfer``), aggregation, report;
- each run's ``metrics.json`` ``seconds`` (``load``: building the run's context in the process, ``train``,
  ``total``), which splits a training job's wall time into process start-up (the job's wall minus its runs'
  ``total``: interpreter, imports, backbone), context load, training and evaluation (``total - load - train``).

Prints two tables (by stage; by method within training) and the end-to-end wall time of the Snakemake command.
On a shared machine the figures are busy-machine figures: say so when quoting them.

Usage:
    .venv/bin/python benchmarks/pipeline_profile.py [--cores 2] [--config config/config.yaml]
        [--set train.job_granularity=run] [--set train.batch_seeds=true] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "prepare": "data generation",
    "split": "data generation",
    "features": "extraction",
    "train": "training jobs",
    "multitask": "training jobs",
    "transfer": "evaluation (transfer)",
    "aggregate": "aggregation",
    "report": "report",
}


def set_key(cfg: dict, dotted: str) -> None:
    """``a.b=value`` (value parsed as YAML) into the config."""
    key, _, value = dotted.partition("=")
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)


def read_benchmark(path: Path) -> tuple[float, float]:
    """(wall s, cpu s) of one Snakemake benchmark file (its first row; cpu_time may be 'NA' for short jobs)."""
    with path.open() as f:
        row = next(csv.DictReader(f, delimiter="\t"))

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return 0.0

    return num(row.get("s")), num(row.get("cpu_time"))


def profile(results: Path) -> tuple[dict, dict, int]:
    """Sums by stage and, for the training jobs, by method; returns (stages, methods, jobs)."""
    stages: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    methods: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    jobs = 0
    bench = results / "benchmarks"
    for tsv in sorted(bench.rglob("*.tsv")):
        rel = tsv.relative_to(bench)
        stage = STAGES.get(rel.parts[0].removesuffix(".tsv"), rel.parts[0])
        wall, cpu = read_benchmark(tsv)
        s = stages[stage]
        s[0], s[1], s[2] = s[0] + wall, s[1] + cpu, s[2] + 1
        jobs += 1
        if rel.parts[0] == "train":  # train/<dataset>/<method>/<shots>shot[_seed<s>].tsv
            dataset, method, name = rel.parts[1], rel.parts[2], rel.stem
            shots = name.split("shot")[0]
            m = methods[method]
            m["jobs"] += 1
            m["wall"] += wall
            m["cpu"] += cpu
            run_total = 0.0
            for metrics in (results / "runs" / dataset / method / f"{shots}shot").glob("seed*/metrics.json"):
                if "_seed" in name and metrics.parent.name != name.split("_")[1]:
                    continue  # a per-run job: only its own seed
                sec = json.loads(metrics.read_text()).get("seconds", {})
                m["runs"] += 1
                m["load"] += sec.get("load", 0.0)
                m["train"] += sec.get("train", 0.0)
                m["eval"] += sec.get("total", 0.0) - sec.get("load", 0.0) - sec.get("train", 0.0)
                run_total += sec.get("total", 0.0)
            m["startup"] += max(0.0, wall - run_total)
    return stages, methods, jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="config key=value (YAML value), repeatable")
    p.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder, removed)")
    p.add_argument("--json", help="also write the tables to this JSON file")
    args = p.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="vlprompt-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(Path(args.config).read_text())
    for key in ("data_root", "results_root", "reports_root"):
        cfg[key] = str(work / key.removesuffix("_root"))
    for s in args.set:
        set_key(cfg, s)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--configfile", str(config), "-q"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    # the rules call `python -m vlprompt`: the interpreter running this script is first on the jobs' PATH, so
    # `.venv/bin/python benchmarks/pipeline_profile.py` works without activating the environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    wall = time.perf_counter() - t0

    stages, methods, jobs = profile(Path(cfg["results_root"]) / cfg["experiment"])
    total_wall = sum(s[0] for s in stages.values())
    total_cpu = sum(s[1] for s in stages.values())
    print(f"\nend-to-end wall time of snakemake --cores {args.cores}: {wall:.0f} s ({jobs} jobs)")
    print(f"sum over jobs: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU\n")
    print(f"{'stage':24s} {'jobs':>5s} {'wall s':>8s} {'CPU s':>8s} {'% of job wall':>14s}")
    for name, (w, c, n) in sorted(stages.items(), key=lambda kv: -kv[1][0]):
        print(f"{name:24s} {n:5d} {w:8.1f} {c:8.1f} {100 * w / max(total_wall, 1e-9):13.1f}%")
    startup = sum(m["startup"] for m in methods.values())
    print(f"  of which process start-up in training jobs (job wall - its runs' total): {startup:.1f} s")
    print(
        f"\n{'training, by method':20s} {'jobs':>5s} {'runs':>5s} {'wall s':>8s} {'CPU s':>8s} "
        f"{'start-up':>9s} {'load':>7s} {'train':>7s} {'eval':>7s}"
    )
    for name, m in sorted(methods.items(), key=lambda kv: -kv[1]["wall"]):
        print(
            f"{name:20s} {int(m['jobs']):5d} {int(m['runs']):5d} {m['wall']:8.1f} {m['cpu']:8.1f} "
            f"{m['startup']:9.1f} {m['load']:7.1f} {m['train']:7.1f} {m['eval']:7.1f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"wall": wall, "jobs": jobs, "stages": stages, "methods": methods}, indent=1)
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
