"""Soak: the pocket few-shot grid run twice in one folder under random `kill -9`, recovered each time by the
README's command, must end with the summary.csv of a clean run.

    python benchmarks/soak.py                       # the full soak (hours on 2 cores): run it on a quiet machine
    python benchmarks/soak.py --short               # one dataset, two shots settings, four methods, a few kills

A clean run first gives the reference summary. Then, in a second folder, each of two passes (the second after the
experiment's own results are deleted, so it trains again on the shared splits and banks the first pass left)
starts Snakemake, and every `--every` seconds (randomly 0.5x to 1.5x) sends SIGKILL either to Snakemake itself or
to one of its running jobs (`python -m vlprompt ...`), chosen at random, then runs the recovery command of the
README (`make run`: `python -m vlprompt unlock-stale`, then `snakemake --cores N --rerun-incomplete`), until a
Snakemake run finishes. Each pass's summary.csv must equal the clean run's, byte for byte. Prints one line per kill
and the verdict. The shared `data_root` is the same for all runs (the pocket datasets are generated once).

This is a benchmark, not a test: it takes as long as its kills let it.
"""

from __future__ import annotations

import argparse
import os
import random
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


def soak_config(short: bool, data_root: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "pocket_fewshot.yaml").read_text())
    sys.path.insert(0, str(REPO / "src"))
    from vlprompt.methods import get_method, list_methods

    if short:
        cfg.update(
            datasets=["pocket_dark"],
            shots=[1, 2],
            seeds=[1],
            methods=["zeroshot", "linear_probe", "tip_adapter", "coop"],
        )
        cfg["pocket"] = {"per_class": {"train": 4, "val": 2, "test": 4}}
        cfg["features"] = {**cfg.get("features", {}), "train_views": 2}
        cfg["method_overrides"] = {"coop": {"epochs": 30}}
        cfg["train"] = {**cfg.get("train", {}), "checkpoint_every": 5}
    else:
        cfg["methods"] = [
            m
            for m in list_methods()
            if get_method(m).inputs == "features"
            and not (get_method(m).reads_unlabelled or get_method(m).reads_multitask_prompt)
        ]
    cfg.update(data_root=str(data_root), results_root="results", reports_root="reports")
    cfg["stats"] = {**cfg.get("stats", {}), "bootstrap_resamples": 200}
    return cfg


def snakemake(work: Path, cores: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*SNAKEMAKE, "-d", str(work), "--cores", str(cores), *extra],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "snakemake.log", "a"),
        env=ENV,
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def jobs_of(pid: int) -> list[int]:
    """The running `python -m vlprompt <command>` jobs under a Snakemake process."""
    out = []
    for child in descendants(pid):
        try:
            cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vlprompt" in cmd and b"-m" in cmd and b"snakemake" not in b" ".join(cmd):
            out.append(child)
    return out


def recovery(work: Path, cores: int) -> subprocess.Popen:
    """The README's command after an interrupted run (`make run`)."""
    subprocess.run(
        [sys.executable, "-m", "vlprompt", "unlock-stale", "--directory", str(work)],
        env=ENV,
        cwd=work,
        check=True,
        capture_output=True,
    )
    return snakemake(work, cores, "--rerun-incomplete")


def soak_pass(work: Path, cores: int, every: float, max_kills: int, rng: random.Random, label: str) -> int:
    """Run to the end under kills; return the number of kills."""
    kills = failures = 0
    proc = snakemake(work, cores)
    while True:
        wait = rng.uniform(0.5, 1.5) * every if kills < max_kills else None
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            jobs = jobs_of(proc.pid)
            if jobs and rng.random() < 0.5:
                victim, what = rng.choice(jobs), "a job"
            else:
                victim, what = proc.pid, "snakemake"
            os.kill(victim, signal.SIGKILL)
            kills += 1
            print(f"{label}: kill -9 {what} (pid {victim}) after {wait:.0f} s", flush=True)
            proc.wait()  # a killed job: snakemake stops after the running ones
            deadline = time.monotonic() + 60  # a killed snakemake: its jobs stop too (vlprompt.pipeline.watchdog)
            while any(Path(f"/proc/{j}").exists() for j in jobs) and time.monotonic() < deadline:
                time.sleep(1)
            proc = recovery(work, cores)
            continue
        if proc.returncode == 0:
            return kills
        tail = (work / "snakemake.log").read_text()[-1500:]
        failures += 1
        if failures > 2:
            raise SystemExit(f"{label}: snakemake failed {failures} times without a kill:\n{tail}")
        print(f"{label}: snakemake exited {proc.returncode} without a kill; recovering\n{tail}", flush=True)
        proc = recovery(work, cores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="a small grid and a couple of kills, to show it works")
    p.add_argument("--every", type=float, default=None, help="seconds between kills (default 180, --short 25)")
    p.add_argument("--kills", type=int, default=None, help="kills per pass at most (default 20, --short 2)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    args = p.parse_args()
    every = args.every or (25.0 if args.short else 180.0)
    max_kills = args.kills if args.kills is not None else (2 if args.short else 20)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="soak_"))
    cfg = soak_config(args.short, root / "data")
    folders = {}
    for name in ("clean", "soak"):
        folders[name] = root / name
        (folders[name] / "config").mkdir(parents=True)
        (folders[name] / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = Path("results") / cfg["experiment"] / "summary.csv"
    print(
        f"# {len(cfg['methods'])} methods, datasets {cfg['datasets']}, shots {cfg['shots']}, seeds {cfg['seeds']}; "
        f"a kill every ~{every:.0f} s, at most {max_kills} per pass; --cores {args.cores}; in {root}",
        flush=True,
    )
    t0 = time.perf_counter()
    clean = snakemake(folders["clean"], args.cores)
    if clean.wait() != 0:
        raise SystemExit(f"the clean run failed:\n{(folders['clean'] / 'snakemake.log').read_text()[-3000:]}")
    print(f"clean run: {time.perf_counter() - t0:.0f} s", flush=True)
    reference = (folders["clean"] / summary).read_text()
    verdicts = []
    for n in (1, 2):
        if n == 2:  # the experiment's own results go; the shared splits and banks stay
            shutil.rmtree(folders["soak"] / "results" / cfg["experiment"])
            shutil.rmtree(folders["soak"] / "reports", ignore_errors=True)
        t0 = time.perf_counter()
        kills = soak_pass(folders["soak"], args.cores, every, max_kills, rng, f"pass {n}")
        same = (folders["soak"] / summary).read_text() == reference
        verdicts.append(same)
        print(
            f"pass {n}: {kills} kills, {time.perf_counter() - t0:.0f} s, summary.csv "
            f"{'equals' if same else 'DIFFERS FROM'} the clean run's",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print("soak: " + ("passed" if all(verdicts) else "FAILED"))
    raise SystemExit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
