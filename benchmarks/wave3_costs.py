"""What the third wave's new inputs and methods cost on a prepared dataset (the pocket benchmark by default).

Prints the wall time and size of: the test bank (every test image once) against the test views (every test image in
V views, TPT's part of the bank); TPT per test image (one step over the training classes' prompts); the PAC-Bayes
search per prompt position (K candidate tokens × the classes' prompts); and one run each of CuPL, FuDD and TFUP
in-process (after the backbone is loaded). Extraction writes into a temporary folder, never into the experiment's.

Usage (after the experiment's data and features exist, e.g. `snakemake --configfile config/pocket_wave3.yaml`):
    .venv/bin/python benchmarks/wave3_costs.py [--config results/pocket_wave3/config.json] [--dataset pocket_dark]
        [--views 64] [--candidates 256] [--images 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="results/pocket_wave3/config.json")
    p.add_argument("--dataset", default="pocket_dark")
    p.add_argument("--views", type=int, default=64)
    p.add_argument("--candidates", type=int, default=256)
    p.add_argument("--images", type=int, default=256, help="test images TPT tunes (timed per image)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from vlprompt.clip import features
    from vlprompt.data import registry, splits
    from vlprompt.experiment.config import load_config
    from vlprompt.methods import get_method
    from vlprompt.training.context import build_context
    from vlprompt.training.context import cached_backbone as _cached_backbone
    from vlprompt.training.runs import run

    cfg = load_config(args.config)
    device = torch.device("cpu")
    backbone = _cached_backbone(cfg, device)
    split = splits.read_split(registry.split_path(cfg, args.dataset))
    root = registry.dataset_dir(cfg, args.dataset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, scale in (
            (features.ExtractionSpec("test", split["test"], 1), 0.08),
            (features.ExtractionSpec("test_views", split["test"], args.views, name="views"), 0.5),
        ):
            t = time.perf_counter()
            path = features.extract_split(
                backbone, root, spec, Path(tmp), batch_size=256, device=device, scale_min=scale, progress=False
            )
            seconds = time.perf_counter() - t
            n = len(split["test"]) * spec.views
            rows.append(
                (
                    f"extract {spec.stem} ({len(split['test'])} images x {spec.views} views)",
                    f"{seconds:7.1f} s  {n / seconds:7.0f} images/s  {path.stat().st_size / 2**20:6.1f} MiB",
                )
            )
        bank = features.FeatureBank(Path(tmp))
        views = bank.take("views", [r[0] for r in split["test"][: args.images]]).transpose(0, 1).contiguous()

    tpt = get_method("tpt")
    ctx, _, _ = build_context(cfg, args.dataset, tpt, 0, 0, device)
    method = tpt(tpt.make_config({"views": args.views}), ctx)
    t = time.perf_counter()
    with torch.no_grad():
        method(views)
    per_image = (time.perf_counter() - t) / len(views)
    rows.append((f"TPT, one step per test image ({len(ctx.classnames)} classes)", f"{per_image:7.3f} s per image"))

    pb = get_method("pacbayes_prompt")
    shots, seed = cfg["shots"][0], cfg["seeds"][0]
    ctx, _, _ = build_context(cfg, args.dataset, pb, shots, seed, device)
    method = pb(pb.make_config({"n_tokens": 1, "candidates": args.candidates}), ctx)
    t = time.perf_counter()
    method.fit(ctx)
    whole = method.vocabulary / args.candidates
    rows.append(
        (
            f"PAC-Bayes search, one position ({args.candidates} tokens x {len(ctx.classnames)} classes)",
            f"{time.perf_counter() - t:7.1f} s (the whole vocabulary: x {whole:.0f})",
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cupl", "fudd", "tfup"):
            if name == "tfup" and cfg.get("unlabelled", "none") == "none":
                continue
            t = time.perf_counter()
            run(cfg, args.dataset, name, 0, 0, f"{tmp}/{name}", progress=False)
            rows.append((f"one {name} run in-process", f"{time.perf_counter() - t:7.1f} s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:{width}s}  {value}")


if __name__ == "__main__":
    main()
