"""What the layer-statistics bank costs and saves for AD-CLIP (docs/domain_adaptation.md).

AD-CLIP reads from each image only the frozen ViT's per-block token mean and std (and its pooled feature). Run in
the loop, every step encodes its source and target batches again; cached, the images are encoded once (a few-shot
subset's V augmented views and the target's training split) and a step reads 2 × L × W numbers per image. This
script measures, through open_clip's model with forward hooks on the image tower's blocks:

- the encoder's time per image with the statistics computed (what every step pays in the loop),
- the time to take a batch's statistics from a cached array (what a step pays with the bank),
- the bank's size per view (fp16),

and prints, for a run of ``--epochs`` epochs on ``--classes`` × ``--shots`` source images (V views in the bank) and
``--target`` unlabelled target images, the encoder time of both designs. Timings on a busy shared CPU are
indicative only; the sizes are exact.

Usage:
    .venv/bin/python benchmarks/layer_statistics_cost.py                          # pocket CLIP and ViT-B/16, CPU
    .venv/bin/python benchmarks/layer_statistics_cost.py --models ViT-B-16 --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vlprompt.clip.backbone import POCKET_MODEL, load_backbone
from vlprompt.clip.features import pick_device
from vlprompt.clip.layer_statistics import block_statistics  # what the bank's rules compute


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[POCKET_MODEL, "ViT-B-16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per domain per step (the reference: 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=50, help="the reference's 50")
    parser.add_argument("--classes", type=int, default=65, help="Office-Home's 65")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10, help="augmented views per source image in the bank")
    parser.add_argument("--target", type=int, default=2000, help="unlabelled target images")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.set_num_threads(1)
    print(f"device {device}, {args.batch} source + {args.batch} target images per step, threads 1 (busy machine?)")
    for name in args.models:
        pretrained = "pocket" if name == POCKET_MODEL else None  # ViT-B/16: random weights, the same arithmetic
        backbone = load_backbone(name, pretrained, device=device)
        size = backbone.model.visual.image_size
        side = size[0] if isinstance(size, tuple | list) else size
        images = torch.randn(2 * args.batch, 3, side, side, device=device)
        with torch.no_grad():
            stats = block_statistics(backbone.model, images)
            per_step = timed(lambda m=backbone.model, x=images: block_statistics(m, x), args.repeats, device)
        layers, width = stats.shape[1], stats.shape[3]
        n_source = args.classes * args.shots
        bank = np.random.default_rng(0).standard_normal((n_source, layers, 2, width)).astype(np.float16)
        rows = np.random.default_rng(1).choice(n_source, 2 * args.batch, replace=False)
        read = timed(lambda b=bank, r=rows: torch.from_numpy(b[r].astype(np.float32)).to(device), 20, device)
        per_image = per_step / (2 * args.batch)
        steps = -(-n_source // args.batch)  # per epoch, a source batch and a target batch each
        in_loop = args.epochs * steps * 2 * args.batch * per_image
        once = (args.views * n_source + args.target) * per_image
        print(
            f"{name}: {layers} blocks x width {width}; statistics per view {2 * layers * width * 2 / 1024:.1f} KiB "
            f"(fp16); encoder with statistics {per_image * 1000:.2f} ms/image, a step's batch from the bank "
            f"{read * 1000:.3f} ms ({per_step / read:.0f}x less); a run of {args.epochs} epochs x {steps} steps: "
            f"encoder in the loop {in_loop / 60:.1f} min, the bank built once {once / 60:.1f} min "
            f"({args.views} views of {n_source} source images + {args.target} target images, "
            f"{(args.views * n_source + args.target) * 2 * layers * width * 2 / 2**20:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
