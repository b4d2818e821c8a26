"""Forward+backward time of ViT-B/16's text tower for a CoOp prompt batch: trimmed vs. all 77 positions.

A realistic CoOp step: 100 classes whose names have 1-5 tokens, 4 shared learnable context tokens,
class at the end ([SOS] ctx x4 name . [EOS]: at most 12 positions), loss through normalised text
features. ``PromptedTextEncoder`` with ``trim=True`` runs the transformer over the longest prompt
of the batch only; under the causal mask this is exact (the script also prints the largest
difference of features and gradients). Random weights (open_clip ``pretrained=None``).

Usage:
    .venv/bin/python benchmarks/text_encoder.py [--classes 100] [--repeat 3] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

WORDS = (
    "red blue green dog cat car bird tree house river lake road field flower plane boat truck horse "
    "apple lion tiger bear forest mountain beach bridge tower street garden chair table lamp clock "
    "phone book glass cup shoe shirt hat ball train bus wheel ship rock sand snow rain cloud star"
).split()


def class_names(tokenizer, n: int, seed: int = 0) -> list[str]:
    """``n`` class names of 1-5 tokens (uniform)."""
    rng = random.Random(seed)
    names = []
    while len(names) < n:
        want = 1 + len(names) % 5
        name = " ".join(rng.choice(WORDS) for _ in range(want))
        if int(tokenizer([name]).argmax(-1)) - 1 == want:
            names.append(name)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from vlprompt.clip.backbone import PromptedTextEncoder, load_backbone
    from vlprompt.clip.features import pick_device
    from vlprompt.clip.prompting import PromptLearner

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    backbone = load_backbone("ViT-B-16", None, device=device, force_quick_gelu=True)
    encoder = PromptedTextEncoder(backbone.model)
    names = class_names(backbone.tokenizer, args.classes)
    learner = PromptLearner(
        encoder, backbone.tokenizer, names, n_ctx=args.n_ctx, ctx_init=None, generator=torch.Generator().manual_seed(0)
    ).to(device)
    image = torch.nn.functional.normalize(torch.randn(32, backbone.embed_dim, device=device), dim=-1)
    labels = torch.randint(0, args.classes, (32,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(trim: bool):
        learner.ctx.grad = None
        feats = encoder(learner.prompts(), learner.eot, trim=trim)  # (n_cls, D)
        logits = 100 * image @ torch.nn.functional.normalize(feats, dim=-1).T
        torch.nn.functional.cross_entropy(logits, labels).backward()
        sync()
        return feats.detach(), learner.ctx.grad.clone()

    def forward(trim: bool):
        with torch.no_grad():
            encoder(learner.prompts(), learner.eot, trim=trim)
        sync()

    def timed(fn, trim):
        fn(trim)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(trim)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    lengths = int(learner.eot.max()) + 1
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"ViT-B/16 text tower (random weights, QuickGELU), {args.classes} classes, {args.n_ctx} context tokens, "
        f"names of 1-5 tokens; {where}"
    )
    print(f"positions: trimmed {lengths} (longest prompt), full {encoder.context_length}")
    (f_t, g_t), (f_f, g_f) = step(True), step(False)
    print(
        f"exactness: max |features diff| {(f_t - f_f).abs().max():.2e} (max |f| {f_f.abs().max():.2f}), "
        f"max |grad diff| {(g_t - g_f).abs().max():.2e} (max |grad| {g_f.abs().max():.2e})"
    )
    for label, fn in (("forward+backward", step), ("forward only", forward)):
        t_trim, t_full = timed(fn, True), timed(fn, False)
        print(
            f"{label:<17} trimmed {t_trim * 1e3:8.1f} ms   full {t_full * 1e3:8.1f} ms   "
            f"speed-up {t_full / t_trim:5.2f}x"
        )


if __name__ == "__main__":
    main()
