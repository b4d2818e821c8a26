"""Regenerate tests/reference/fixtures/adclip.pt: one training step of AD-CLIP's own trainer on the tiny CLIP.

    python tests/reference/regenerate_adclip.py --refs DIR

DIR holds a checkout of mainaksingha01/AD-CLIP at c82d861 as ``DIR/ADCLIP``; nothing of it is copied into vlprompt.
What runs is the reference's code: its ``clip`` package (``clip/model.py``, whose ``Transformer`` returns every
block's tokens) builds the tiny OpenAI-layout CLIP of ``tiny_clip.py``; its ``CustomCLIP`` (prompt learner, three
projectors, text encoder) and ``ADCLIPB16.forward_backward`` (the ``amp`` branch, the only one computing a loss;
``autocast`` is off on the CPU, so fp32) take one step on 3 source images with labels and 3 other images as the
target batch. Changed, and why the numbers still are the reference's:

* Dassl is replaced by the few names the module imports (``regenerate_adclip_parts.stub_dassl``);
* the hard-coded ViT-B/16 sizes become the tiny CLIP's: ``nn.Linear``/the adaptive pools through ``SIZES``
  (width 768 → 64, hidden 256 → 21 and 384 → 32, text width 512 → 128, the 12 layers of ``Linear(12, 1)`` → 3)
  and the module's ``range(12)`` → ``range(3)`` (one projector per block);
* the prompt learner's hard-coded 24 + 4 context tokens become 2 × 3 + 4 = 10, what its projectors produce for a
  3-block ViT: its token buffers are rebuilt with the reference's own tokenizer and token embedding, as its
  ``__init__`` builds them, with 10 "X";
* ``clip.model.convert_weights`` is a no-op (the tiny weights are fp16 values: the cast would not change them);
* the optimiser is ``torch.optim.Adam`` with Dassl's settings for ``adam`` (weight decay 5e-4) at the lr of the
  first step (the warm-up's 1e-5); the GradScaler stand-in scales by 1.

The fixture holds the reference's initial projector weights (named as ``vlprompt.methods.adclip``'s), the
per-block token statistics of both batches from the reference's ``AdaIN`` (L, B, 2, W), its step outputs
(logits, target probabilities, domain and style tokens, text features), its loss terms, the gradients and the
weights after the step.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_clip  # noqa: E402
from regenerate_adclip_parts import COMMIT, Scaler, stub_dassl  # noqa: E402

FIXTURE = HERE / "fixtures" / "adclip.pt"
L, W, E = tiny_clip.LAYERS, tiny_clip.VISION_WIDTH, tiny_clip.TEXT_WIDTH
SIZES = {768: W, 256: W // 3, 384: W // 2, 512: E, 12: L}
N_IMG = 4
LR, WEIGHT_DECAY = 1e-5, 5e-4
NAMES = {"domain_tokens": "domain", "image_tokens": "image", "style_mapping_tokens": "style"}


def small_nn() -> types.SimpleNamespace:
    nn = torch.nn
    attrs = {name: getattr(nn, name) for name in dir(nn) if not name.startswith("_")}
    attrs["Linear"] = lambda i, o: nn.Linear(SIZES.get(i, i), SIZES.get(o, o))
    attrs["AdaptiveAvgPool2d"] = lambda size: nn.AdaptiveAvgPool2d((size[0], SIZES[size[1]]))
    attrs["AdaptiveAvgPool1d"] = lambda size: nn.AdaptiveAvgPool1d(SIZES[size])
    return types.SimpleNamespace(**attrs)


def vlprompt_name(name: str) -> str:
    """``domain_tokens.linear1.0.weight`` (of the prompt learner) -> ``tokens.domain.linear1.0.weight``."""
    head, rest = name.split(".", 1)
    return f"tokens.{NAMES[head]}.{rest}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--refs", required=True, type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.refs / "ADCLIP"))
    stub_dassl()
    import clip.model

    clip.model.convert_weights = lambda model: None
    ref = __import__("trainers.adclip_vitB16", fromlist=["ADCLIPB16"])
    ref.nn = small_nn()
    ref.range = lambda n, *rest: range(L if n == 12 else n, *rest)

    data = tiny_clip.inputs()
    classnames = data["classnames"]
    source, labels = data["images"][:3], data["labels"][:3]
    target = data["views"][0][3:6]  # other images, augmented: the unlabelled target batch
    clip_model = clip.model.build_model(tiny_clip.state_dict()).float().eval()
    cfg = types.SimpleNamespace(
        INPUT=types.SimpleNamespace(SIZE=(tiny_clip.IMAGE, tiny_clip.IMAGE)),
        TRAINER=types.SimpleNamespace(ADCLIPB16=types.SimpleNamespace(PREC="amp")),
    )
    torch.manual_seed(0)
    model = ref.CustomCLIP(cfg, classnames, clip_model)
    pl = model.prompt_learner
    n_ctx = 2 * L + N_IMG  # the projectors' tokens for a 3-block ViT (the reference's 24 + 4 at 12 blocks)
    names = [name.replace("_", " ") for name in classnames]
    tokenized = torch.cat([ref.clip.tokenize(" ".join(["X"] * n_ctx) + " " + name + ".") for name in names])
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokenized)
    pl.token_prefix = embedding[:, :1, :]
    pl.token_suffix = embedding[:, 1 + n_ctx :, :]
    pl.tokenized_prompts = model.tokenized_prompts = tokenized
    pl.n_ctx = n_ctx
    for name, param in model.named_parameters():
        param.requires_grad_("prompt_learner" in name)
    trained = {n: p for n, p in pl.named_parameters() if p.requires_grad}
    init = {vlprompt_name(n): p.detach().clone() for n, p in trained.items()}

    adain = ref.AdaIN()
    statistics = {}
    with torch.no_grad():
        for key, images in (("source", source), ("target", target)):
            _, tokens = model.image_encoder(images)  # (L, B, T, W)
            statistics[key] = torch.stack(
                [torch.stack([adain.mu(t), adain.sigma(t)], dim=1) for t in tokens]
            )  # (L, B, 2, W)
        names_out = ("source_logits", "target_probs", "source_domain", "source_style", "source_text", "target_text")
        outputs = dict(zip(names_out, (t.clone() for t in model(source, target)), strict=True))

    trainer = object.__new__(ref.ADCLIPB16)
    trainer.__dict__.update(
        model=model,
        optim=torch.optim.Adam(pl.parameters(), lr=LR, weight_decay=WEIGHT_DECAY),
        scaler=Scaler(),
        n_cls=len(classnames),
        device=torch.device("cpu"),
        cfg=cfg,
        update_lr=lambda: None,
    )
    summary = trainer.forward_backward({"img": source, "label": labels}, {"img": target})
    fixture = {
        "references": [{"repo": "mainaksingha01/AD-CLIP", "commit": COMMIT}],
        "classnames": classnames,
        "settings": {"layers": L, "width": W, "text_width": E, "n_image_tokens": N_IMG, "lr": LR},
        "source_images": source,
        "labels": labels,
        "target_images": target,
        "init": init,
        "statistics": statistics,
        "outputs": outputs,
        "terms": {k.removeprefix("loss_"): torch.tensor(v) for k, v in summary.items() if k.startswith("loss")},
        "grad": {vlprompt_name(n): p.grad.clone() for n, p in trained.items()},
        "after": {vlprompt_name(n): p.detach().clone() for n, p in trained.items()},
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, FIXTURE)
    print(f"wrote {FIXTURE}: " + ", ".join(f"{k}={v:.6f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
