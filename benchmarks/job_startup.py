"""Per-job start-up cost of a training job, against the work of one pocket run.

Prints the wall time of: a bare interpreter, `import torch`, `import open_clip`, `import vlprompt.training.runs`
(everything a training job imports), loading the pocket backbone, and one zero-shot and one CoOp run
done in-process. This is what `train.job_granularity` trades: one process per run pays the start-up
once per run; one process per method x dataset x shots (`job_granularity: shots`) pays it once per group of seeds.

Usage (after `make run` has prepared the features, or any config whose features exist):
    .venv/bin/python benchmarks/job_startup.py [--config results/pocket/config.json] [--dataset pocket_dark]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def wall(code: str, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="results/pocket/config.json")
    p.add_argument("--dataset", default="pocket_dark")
    p.add_argument("--shots", type=int, default=16)
    args = p.parse_args()

    rows = [
        ("python (bare)", wall("pass")),
        ("import torch", wall("import torch")),
        ("import open_clip", wall("import open_clip")),
        (
            "import vlprompt.training.runs (a job's imports)",
            wall("import vlprompt.training.runs, vlprompt.methods; vlprompt.methods.list_methods()"),
        ),
    ]
    import torch

    torch.set_num_threads(1)
    from vlprompt.experiment.config import load_config
    from vlprompt.training.context import cached_backbone as _cached_backbone
    from vlprompt.training.runs import run

    cfg = load_config(args.config)
    t = time.perf_counter()
    _cached_backbone(cfg, torch.device("cpu"))
    rows.append(("load the backbone", time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as tmp:
        for method, shots in (("zeroshot", 0), ("coop", args.shots)):
            t = time.perf_counter()
            run(cfg, args.dataset, method, shots, 1 if shots else 0, f"{tmp}/{method}", progress=False)
            rows.append((f"one {method} run in-process ({shots} shots)", time.perf_counter() - t))
    width = max(len(r[0]) for r in rows)
    for name, seconds in rows:
        print(f"{name:{width}s}  {seconds:6.2f} s")
    startup = rows[3][1] + rows[4][1]
    print(
        f"\nper-process start-up of a training job: {startup:.2f} s "
        f"(= {startup / rows[5][1]:.1f}x a zero-shot run, {startup / rows[6][1]:.2f}x a CoOp run)"
    )


if __name__ == "__main__":
    main()
