"""What one training step costs for the methods that work inside the two towers, against VPT-deep and MaPLe.

A step is what the image loop does per batch: the method's loss (its forward through the prompted or adapted
towers, plus any frozen pass: CoPrompt's second view), the backward and any gradient hook (GLAD's SAM pass).
Timed on the CPU, one thread, after two warm-up steps, median of ``--steps``, for each method on
  * the pocket CLIP (the shipped ``pocket_v2`` weights, 32 px, batch 4 as the deep-prompt presets), and
  * ViT-B/16 with random weights (open_clip's architecture, 224 px, no download; batch 2 by default),
with ``--classes`` class names. Prints seconds per step and the ratio to VPT-deep and to MaPLe. Random weights
cost the same arithmetic as trained ones; the absolute figures are the CPU's, the ratios carry to a GPU only
roughly (the frozen pass and the text tower weigh differently there).

Usage: .venv/bin/python benchmarks/encoder_method_costs.py [--steps 5] [--classes 10] [--vit-batch 2]
    [--methods vpt_deep,maple,clip_lora,coprompt,hicropl,disa,glad,dpl] [--skip-vit]
On the pocket CLIP HiCroPL runs with 8 tokens (its 16 do not fit the 20-token text context), as in
config/pocket_inside_encoders.yaml.
Say whether the machine was quiet when you report the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

POCKET_OVERRIDES = {"hicropl": {"n_ctx": 8}}  # the pocket CLIP's 20-token text context


def step_seconds(method, images, labels, steps: int) -> float:
    import torch

    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    method.train()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, _ = method.loss(images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        adjust = getattr(method, "adjust_gradients", None)  # as the training loop: GLAD's SAM pass
        if adjust is not None:
            adjust(images, labels)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def build(name: str, backbone, classnames: list[str], overrides: dict):
    import torch

    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.methods import MethodContext, get_method

    sentences = ("a photo of a {}.", "a {}, seen from the side.", "a close-up of a {}.")
    descriptions = {c: [s.format(c) for s in sentences] for c in classnames}
    ctx = MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=classnames,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
        descriptions=descriptions,
    )
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx), cls.train_views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--vit-batch", type=int, default=2)
    p.add_argument("--methods", default="vpt_deep,maple,clip_lora,coprompt,hicropl,disa,glad,dpl")
    p.add_argument("--skip-vit", action="store_true", help="only the pocket CLIP")
    args = p.parse_args()

    import torch

    from vlprompt.clip.backbone import load_backbone

    torch.set_num_threads(1)
    names = [m for m in args.methods.split(",") if m]
    classnames = [f"{c} {s}" for c in ("red", "blue", "green", "yellow", "purple") for s in ("circle", "square")]
    classnames = (classnames * (args.classes // len(classnames) + 1))[: args.classes]
    backbones = [("pocket CLIP (32 px)", "PocketCLIP-ViT-T8", "pocket_v2", 4)]
    if not args.skip_vit:
        backbones.append(("ViT-B/16, random weights (224 px)", "ViT-B-16", None, args.vit_batch))
    for title, model, pretrained, batch in backbones:
        backbone = load_backbone(model, pretrained)
        size = backbone.image_size
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(batch) % len(classnames)
        seconds = {}
        for name in names:
            overrides = POCKET_OVERRIDES.get(name, {}) if pretrained == "pocket_v2" else {}
            method, views = build(name, backbone, classnames, overrides)
            shape = (batch, views, 3, size, size) if views > 1 else (batch, 3, size, size)
            images = torch.randn(shape, generator=gen)
            seconds[name] = step_seconds(method, images, labels, args.steps)
        print(f"\n{title}: batch {batch}, {len(classnames)} classes, median of {args.steps} steps, 1 thread")
        print(f"{'method':<12} {'s/step':>8} {'x VPT-deep':>11} {'x MaPLe':>8}")
        for name, s in seconds.items():
            vpt = f"{s / seconds['vpt_deep']:.2f}" if "vpt_deep" in seconds else "-"
            maple = f"{s / seconds['maple']:.2f}" if "maple" in seconds else "-"
            print(f"{name:<12} {s:8.3f} {vpt:>11} {maple:>8}")


if __name__ == "__main__":
    main()
