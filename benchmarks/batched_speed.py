"""Runs per hour of CoOp-family training on cached features: R seeds one after the other against R seeds trained
together (vlprompt.training.batched: the text tower once per step over all their prompts).

Both variants go through the project's code (``feature_runs.feature_loop`` for a run alone, ``batched.
train_together`` for the group) on the same random few-shot features, the same classes and hyperparameters; the
printed ratio is what ``train.batch_seeds`` gains per training job, start-up and evaluation excluded.
An image-loop method (``--method vpt_deep``) trains on random images written as PNG files (decoded and augmented
each step as in a real run): ``image_runs.image_loop`` for a run alone, ``batched_images.train_together`` (the
image tower once per step over all runs' images, each with its own deep prompts) for the group.
On a GPU the tower's kernels are launch-bound at these sizes (a CoOp step over 100 classes is ~16 ms on an
H200 against a fraction of a millisecond of arithmetic), which is where the batching pays most.

Usage:
    .venv/bin/python benchmarks/batched_speed.py                                  # pocket CLIP, CPU, 3 seeds
    .venv/bin/python benchmarks/batched_speed.py --device cuda --model ViT-B-16 --classes 100 --runs 3 8
    .venv/bin/python benchmarks/batched_speed.py --method vpt_deep --batch-size 4 --epochs 1   # deep prompts, CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlprompt.clip.backbone import POCKET_MODEL, POCKET_WEIGHTS, PromptedTextEncoder, load_backbone
from vlprompt.clip.features import pick_device
from vlprompt.methods import MethodContext, get_method
from vlprompt.training import batched, batched_images, feature_runs, image_runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepared_runs(backbone, device, method: str, classes: int, shots: int, seeds, overrides: dict, out: Path):
    cls = get_method(method)
    mcfg = cls.make_config(overrides)
    names = [f"class {i}" for i in range(classes)]
    runs = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        ctx = MethodContext(
            backbone=backbone,
            encoder=PromptedTextEncoder(backbone.model),
            classnames=names,
            template="a photo of a {}.",
            device=device,
            seed=seed,
            train_features=torch.randn(2, classes * shots, backbone.embed_dim, generator=g),
            train_labels=torch.arange(classes).repeat_interleave(shots),
        )
        torch.manual_seed(seed)
        method_obj = cls(mcfg, ctx).to(device)
        runs.append(
            feature_runs.PreparedRun(
                None, "random", shots, seed, out / str(seed), cls, mcfg, method_obj, ctx, None, None, 0.0, 0.0
            )
        )
    return runs


def image_folder(backbone, classes: int, shots: int, out: Path) -> list[list]:
    """``classes`` x ``shots`` random RGB images (PNG, the backbone's input size) under ``out``: rows as the image
    runner reads them ([relpath, label, name])."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows = []
    for k in range(classes * shots):
        pixels = torch.randint(0, 256, (backbone.image_size, backbone.image_size, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(out / f"{k}.png")
        rows.append([f"{k}.png", k % classes, f"class {k % classes}"])
    return rows


def prepared_image_runs(
    backbone, device, method: str, classes: int, seeds, overrides: dict, rows, root: Path, out: Path
):
    cls = get_method(method)
    mcfg = cls.make_config({**overrides, "template": None})  # the context's template (no dataset here)
    names = [f"class {i}" for i in range(classes)]
    transform = image_runs.training_transform(backbone, mcfg, 0.5)
    runs = []
    for seed in seeds:
        ctx = MethodContext(
            backbone=backbone,
            encoder=PromptedTextEncoder(backbone.model),
            classnames=names,
            template="a photo of a {}.",
            device=device,
            seed=seed,
        )
        torch.manual_seed(seed)
        method_obj = cls(mcfg, ctx).to(device)
        runs.append(
            image_runs.PreparedImageRun(
                {"features": {"workers": 0}},
                "random",
                0,
                seed,
                out / str(seed),
                cls,
                mcfg,
                method_obj,
                ctx,
                {},
                names,
                root,
                False,
                0.0,
                0.0,
                rows,
                transform,
            )
        )
    return runs


def image_lines(args, backbone, device, overrides: dict, tmp: Path) -> None:
    """The deep-prompt case: R runs of an image-loop method one after the other against together."""
    rows = image_folder(backbone, args.classes, args.shots, tmp / "images")
    for r in args.runs:
        seeds = list(range(1, r + 1))
        made = [
            prepared_image_runs(
                backbone, device, args.method, args.classes, seeds, overrides, rows, tmp / "images", tmp / f"{name}{r}"
            )
            for name in ("warm", "a", "b")
        ]
        warm = made[0][0]
        image_runs.image_loop(
            warm.method, warm.ctx, warm.mcfg, warm.root, rows, warm.transform, warm.checkpoint, 10**6, progress=False
        )
        sync(device)
        t = time.perf_counter()
        for run in made[1]:
            image_runs.image_loop(
                run.method, run.ctx, run.mcfg, run.root, rows, run.transform, run.checkpoint, 10**6, progress=False
            )
        sync(device)
        alone = time.perf_counter() - t
        t = time.perf_counter()
        batched_images.train_together(made[2], checkpoint_every=10**6)
        sync(device)
        together = time.perf_counter() - t
        print(
            f"  {r} runs: one after the other {alone:7.2f} s, together {together:7.2f} s; runs per hour "
            f"{3600 * r / alone:9.0f} -> {3600 * r / together:9.0f} ({alone / together:.2f}x)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=POCKET_MODEL, help="open_clip model name (ViT-B-16: random weights)")
    p.add_argument("--method", default="coop")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, nargs="+", default=[3], help="runs trained together (several: one line each)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    pretrained = str(POCKET_WEIGHTS) if args.model == POCKET_MODEL and POCKET_WEIGHTS.exists() else None
    backbone = load_backbone(args.model, pretrained, device=device)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "warmup_epochs": 0}
    print(
        f"{args.method} on {args.model} ({device}, {torch.get_num_threads()} thread(s)); {args.classes} classes x "
        f"{args.shots} shots, batch {args.batch_size}, {args.epochs} epochs per run"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if get_method(args.method).inputs == "images":
            image_lines(args, backbone, device, overrides, Path(tmp))
            return
        for r in args.runs:
            seeds = list(range(1, r + 1))
            runs = prepared_runs(
                backbone, device, args.method, args.classes, args.shots, seeds, overrides, Path(tmp) / "a"
            )
            feature_runs.feature_loop(runs[0].method, runs[0].ctx, runs[0].mcfg, Path(tmp) / "warm", 10**6, False)
            sync(device)
            t = time.perf_counter()
            for run in runs:
                feature_runs.feature_loop(run.method, run.ctx, run.mcfg, run.checkpoint, 10**6, progress=False)
            sync(device)
            alone = time.perf_counter() - t
            runs = prepared_runs(
                backbone, device, args.method, args.classes, args.shots, seeds, overrides, Path(tmp) / "b"
            )
            sync(device)
            t = time.perf_counter()
            batched.train_together(runs, checkpoint_every=10**6)
            sync(device)
            together = time.perf_counter() - t
            print(
                f"  {r} runs: one after the other {alone:7.2f} s, together {together:7.2f} s; runs per hour "
                f"{3600 * r / alone:9.0f} -> {3600 * r / together:9.0f} ({alone / together:.2f}x)"
            )


if __name__ == "__main__":
    main()
