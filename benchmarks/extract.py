"""Images per second of the feature bank, against a plain per-batch ``encode_image`` loop and the FLOP bound.

For each backbone (the pocket CLIP with its shipped weights; with ``--vit-b-16 N`` also ViT-B/16 with
random weights on N images) it prints:

- the FLOPs of ``encode_image`` per image (``torch.utils.flop_counter``) and the machine's matmul
  throughput measured in the same run (fp32 on CPU; fp16 on a GPU), hence the FLOP bound in images/s;
- the model alone on a ready tensor (compute only);
- a plain loop: open, preprocess and encode the images batch by batch in the main process;
- the feature bank (``features.extract_split``: DataLoader, autocast fp16 on GPU, fp16 memmap,
  progress markers) with 0 and ``--workers`` worker processes.

Usage:
    .venv/bin/python benchmarks/extract.py [--images 512] [--batch-size 64] [--threads 1] [--vit-b-16 16]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch


def matmul_flops_per_s(device: torch.device, n: int = 1024, seconds: float = 2.0) -> float:
    """Sustained dense matmul throughput (fp32 on CPU, fp16 on CUDA), in FLOP/s."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_image(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size, device=next(model.parameters()).device)
    # in eval mode nn.MultiheadAttention takes a fused fast path that the counter does not see
    # (a third of ViT-B/16's FLOPs); count in train mode, where it runs as plain matmuls
    training = model.training
    model.train()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.encode_image(x)
    finally:
        model.train(training)
    return counter.get_total_flops() / 2


def rate(fn, n_images: int, repeat: int = 1) -> float:
    """Images per second of ``fn`` (best of ``repeat``)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def make_images(root: Path, n: int) -> list:
    from vlprompt.data import pocket

    world = pocket.World()  # 64 classes
    per_class = max(1, math.ceil(n / len(world.classnames)))
    ds = pocket.PocketDataset(name="Bench", style="noisy", per_class={"test": per_class})
    split = json.loads(pocket.generate(ds, world, root, progress=False).read_text())
    return split["test"][:n]


def bench(
    backbone, root: Path, rows: list, batch_size: int, workers: int, device: torch.device, matmul: float, repeat: int
) -> None:
    from PIL import Image

    from vlprompt.clip import features

    model = backbone.model.to(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n = len(rows)
    flops = flops_per_image(model, backbone.image_size)
    bound = matmul / flops
    print(f"\n{backbone.id}: {flops / 1e9:.3f} GFLOP per image, {n} images, batch {batch_size}, device {device}")

    x = torch.stack([backbone.preprocess(Image.open(root / r[0]).convert("RGB")) for r in rows[:batch_size]])
    x = x.to(device)

    @torch.inference_mode()
    def model_only():
        for _ in range(0, n, batch_size):
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                model.encode_image(x[: min(batch_size, n)])
        sync()

    @torch.inference_mode()
    def plain_loop():
        out = []
        for i in range(0, n, batch_size):
            imgs = torch.stack(
                [backbone.preprocess(Image.open(root / r[0]).convert("RGB")) for r in rows[i : i + batch_size]]
            )
            out.append(model.encode_image(imgs.to(device)).float().cpu())
        return torch.cat(out)

    def bank(w):
        def run():
            with tempfile.TemporaryDirectory() as d:
                features.extract_split(
                    backbone,
                    root,
                    features.ExtractionSpec("test", rows, 1),
                    Path(d),
                    batch_size=batch_size,
                    workers=w,
                    device=device,
                    progress=False,
                )

        return run

    model_only()  # warm-up (allocator, kernels)
    results = [
        ("FLOP bound (matmul throughput / FLOPs per image)", bound),
        ("model only (encode_image on a ready tensor)", rate(model_only, n, repeat)),
        ("plain loop (open + preprocess + encode_image, fp32)", rate(plain_loop, n, repeat)),
        ("feature bank, 0 workers", rate(bank(0), n, repeat)),
    ]
    if workers:
        results.append((f"feature bank, {workers} workers", rate(bank(workers), n, repeat)))
    plain = results[2][1]
    for name, r in results:
        print(f"  {name:<52} {r:10.1f} img/s   {r / bound:6.1%} of bound   {r / plain:5.2f}x plain loop")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="pocket images (32 px) for the pocket CLIP")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers for the second bank run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: keep low)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--vit-b-16", type=int, default=0, metavar="N", help="also ViT-B/16 (random weights) on N images")
    args = p.parse_args()

    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone
    from vlprompt.clip.features import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    matmul = matmul_flops_per_s(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"matmul throughput: {matmul / 1e9:.1f} GFLOP/s ({'fp16' if device.type == 'cuda' else 'fp32'}, {name})")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        rows = make_images(root, max(args.images, args.vit_b_16))
        bench(
            load_backbone(POCKET_MODEL, "pocket"),
            root,
            rows[: args.images],
            args.batch_size,
            args.workers,
            device,
            matmul,
            args.repeat,
        )
        if args.vit_b_16:
            torch.manual_seed(0)
            vit = load_backbone("ViT-B-16", None, force_quick_gelu=True)
            bench(
                vit,
                root,
                rows[: args.vit_b_16],
                min(args.batch_size, args.vit_b_16),
                args.workers,
                device,
                matmul,
                args.repeat,
            )


if __name__ == "__main__":
    main()
