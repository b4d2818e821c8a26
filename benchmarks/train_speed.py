"""Time per CoOp epoch on cached image features against the same training with the image encoder in the loop.

The Dassl-based reference code (KaiyangZhou/CoOp and its descendants) decodes and augments every training
image at every step and runs the frozen image encoder on it before the prompt's forward and backward. On a
frozen encoder that work is the same in every epoch up to the random augmentation, so vlprompt extracts the
augmented views once into the feature bank and trains on them. This script runs both on the same model,
the same few-shot data, the same CoOp method (4 context tokens from "a photo of a", SGD, batch 32) and the
same number of steps, in one process, and prints the ratio of the times per epoch.

- in the loop: per step, the batch's images go through the training transform (random resized crop
  scale 0.08-1, bicubic, flip, CLIP normalisation; PIL, in this process) and the frozen image encoder
  (no grad), then CoOp's loss, backward and SGD step;
- cached: per step, the batch's features are gathered from a (views, N, D) tensor, then the same loss,
  backward and step. The one-off extraction of the views is timed and reported separately.

Images are random RGB images kept in memory (no disk decoding, which favours the in-the-loop variant).
The default model is the pocket CLIP (shipped weights if present, else random); ``--model ViT-B-16`` runs
the real-size architecture with random weights (timing only; the weights do not change the cost).

Usage:
    .venv/bin/python benchmarks/train_speed.py                       # pocket CLIP, 32 classes x 16 shots
    .venv/bin/python benchmarks/train_speed.py --model ViT-B-16 --steps 3 --classes 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from vlprompt.clip.backbone import POCKET_MODEL, POCKET_WEIGHTS, PromptedTextEncoder, load_backbone
from vlprompt.clip.features import pick_device, train_transform
from vlprompt.data import pocket
from vlprompt.methods import MethodContext, get_method
from vlprompt.training.loop import make_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def class_names(n: int) -> list[str]:
    world = pocket.World()
    names = [f"{c} {s}" for c, s in world.classes]
    return (names * (n // len(names) + 1))[:n] if n > len(names) else names[:n]


def train_steps(method, opt, batches, get_features, device) -> tuple[float, float]:
    """Run the CoOp steps; returns (total seconds, seconds spent producing image features)."""
    feature_time = 0.0
    sync(device)
    t0 = time.perf_counter()
    for idx, labels in batches:
        t = time.perf_counter()
        x = get_features(idx)
        sync(device)
        feature_time += time.perf_counter() - t
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss, _ = method.loss(x, labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0, feature_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=POCKET_MODEL, help="open_clip model name (ViT-B-16: random weights)")
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--views", type=int, default=4, help="augmented views in the feature bank")
    p.add_argument("--steps", type=int, default=None, help="steps timed per variant (default: one epoch)")
    p.add_argument("--source-size", type=int, default=None, help="stored image side (default: 1.25 x input)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device)
    pretrained = str(POCKET_WEIGHTS) if args.model == POCKET_MODEL and POCKET_WEIGHTS.exists() else None
    backbone = load_backbone(args.model, pretrained, device=device)
    model = backbone.model
    size = backbone.image_size
    names = class_names(args.classes)
    n = args.classes * args.shots
    labels = torch.arange(args.classes).repeat_interleave(args.shots)
    rng = np.random.default_rng(0)
    side = args.source_size or int(size * 1.25)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
    tf = train_transform(size, model.visual.image_mean, model.visual.image_std)

    @torch.no_grad()
    def encode(idx) -> torch.Tensor:
        batch = torch.stack([tf(images[i]) for i in idx.tolist()]).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return model.encode_image(batch).float()

    # the feature bank: every image in `views` augmented views, extracted once
    sync(device)
    t = time.perf_counter()
    bank = torch.stack(
        [torch.cat([encode(torch.arange(i, min(i + 64, n))) for i in range(0, n, 64)]) for _ in range(args.views)]
    )  # (V, N, D)
    sync(device)
    t_extract = time.perf_counter() - t

    steps_per_epoch = max(1, n // args.batch_size)
    steps = args.steps or steps_per_epoch
    gen = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(steps // steps_per_epoch + 1)])
    batches = [(order[s * args.batch_size : (s + 1) * args.batch_size], None) for s in range(steps)]
    batches = [(idx, labels[idx]) for idx, _ in batches]
    view = torch.randint(args.views, (n,), generator=gen)

    def run(get_features):
        ctx = MethodContext(
            backbone=backbone,
            encoder=PromptedTextEncoder(model),
            classnames=names,
            template="a photo of a {}.",
            device=device,
            seed=0,
        )
        cls = get_method("coop")
        cfg = cls.make_config({"batch_size": args.batch_size})
        method = cls(cfg, ctx).to(device).train()
        opt = make_optimizer(cfg, [q for q in method.parameters() if q.requires_grad])
        train_steps(method, opt, batches[:1], get_features, device)  # warm-up (allocations, kernels)
        return train_steps(method, opt, batches, get_features, device)

    t_cached, f_cached = run(lambda idx: bank[view[idx], idx])
    t_loop, f_loop = run(encode)
    per_epoch = steps_per_epoch / steps
    ratio = t_loop / t_cached
    print(
        f"model {args.model} ({'pretrained' if pretrained else 'random weights'}), device {device}, "
        f"{torch.get_num_threads()} thread(s); {args.classes} classes x {args.shots} shots = {n} images, "
        f"batch {args.batch_size}, {steps_per_epoch} steps/epoch, {steps} steps timed per variant"
    )
    print(
        f"  image encoder in the loop: {t_loop * per_epoch:8.3f} s/epoch "
        f"(augment + encode {f_loop * per_epoch:.3f} s, "
        f"prompt forward/backward {(t_loop - f_loop) * per_epoch:.3f} s)"
    )
    print(f"  cached features:           {t_cached * per_epoch:8.3f} s/epoch (gather {f_cached * per_epoch:.4f} s)")
    print(
        f"  one-off extraction of {args.views} views: {t_extract:.3f} s "
        f"(= {t_extract / (t_loop * per_epoch - t_cached * per_epoch):.1f} epochs of the saving)"
    )
    print(f"speed-up per epoch (in the loop / cached): {ratio:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
