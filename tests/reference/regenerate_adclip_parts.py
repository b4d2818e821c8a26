"""Regenerate tests/reference/fixtures/adclip_parts.pt from AD-CLIP's own trainer module.

    python tests/reference/regenerate_adclip_parts.py --refs DIR

DIR holds a checkout of mainaksingha01/AD-CLIP at c82d861 as ``DIR/ADCLIP``; nothing of it is copied into vlprompt.
The script imports ``trainers/adclip_vitB16.py`` from there (its ``clip`` package too; ftfy and regex are vlprompt
dependencies already) with Dassl replaced by the few names the module imports, and runs:

* its three projectors (``domain_projector``, ``image_projector``, ``style_mapping_projector``) on random per-layer
  tokens of a source and a target batch, as ``Transformer.forward`` of its ``clip/model.py`` returns them
  (L, B, T, W). They hard-code ViT-B/16's sizes (12 layers, width 768, hidden 256 and 384, text width 512); the
  module's ``nn`` is replaced by torch.nn with ``Linear`` and the two adaptive pools mapping those constants to
  a small model's (``SIZES``: width 24, hidden 8 and 12, text width 16; 12 layers kept), so that the fixture is
  small. The code that runs is the reference's; only its constants change;
* its ``ADCLIPB16.forward_backward`` (the ``amp`` branch, the only one that computes a loss; ``autocast`` is off on
  the CPU, so fp32) for one step, with ``self.model`` replaced by a function that returns the projectors' source
  domain and style-mapping tokens and fixed logits, target probabilities and text features (leaves): its own loss
  lines, its ``entropy_loss``, its Adam step (lr 0.01, the shipped config) through a GradScaler stand-in that scales
  by 1.

What it does not cover: the text encoder and the per-image prompts, which ``regenerate_adclip.py`` runs (the full
model's step on the tiny CLIP).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

COMMIT = "c82d861df8a5df09ab5e1a630c9348c2d3961304"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "adclip_parts.pt"
L, B, T, W, E, C = 12, 3, 5, 24, 16, 7
SIZES = {768: W, 256: W // 3, 384: W // 2, 512: E}  # the reference's hard-coded sizes -> the fixture's


def stub_dassl() -> None:
    """The names trainers/adclip_vitB16.py imports from Dassl; none of them computes anything used here except
    ``compute_accuracy`` (for its loss summary)."""

    class Registry:
        def register(self):
            return lambda cls: cls

    def compute_accuracy(output, target, topk=(1,)):
        return [(output.argmax(1) == target).float().mean() * 100]

    names = {
        "dassl": {},
        "dassl.engine": {"TRAINER_REGISTRY": Registry(), "TrainerXU": object},
        "dassl.metrics": {"compute_accuracy": compute_accuracy},
        "dassl.utils": {n: None for n in ("MetricMeter", "AverageMeter", "load_pretrained_weights")}
        | {"load_checkpoint": None, "save_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def small_nn() -> types.SimpleNamespace:
    """torch.nn with the reference's hard-coded sizes mapped through ``SIZES``."""
    nn = torch.nn
    attrs = {name: getattr(nn, name) for name in dir(nn) if not name.startswith("_")}
    attrs["Linear"] = lambda i, o: nn.Linear(SIZES.get(i, i), SIZES.get(o, o))
    attrs["AdaptiveAvgPool2d"] = lambda size: nn.AdaptiveAvgPool2d((size[0], SIZES[size[1]]))
    attrs["AdaptiveAvgPool1d"] = lambda size: nn.AdaptiveAvgPool1d(SIZES[size])
    return types.SimpleNamespace(**attrs)


class Scaler:
    """torch.cuda.amp.GradScaler at scale 1 on the CPU."""

    def scale(self, loss):
        return loss

    def step(self, optim):
        optim.step()

    def update(self):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--refs", required=True, type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.refs / "ADCLIP"))
    stub_dassl()
    ref = __import__("trainers.adclip_vitB16", fromlist=["ADCLIPB16"])
    ref.nn = small_nn()

    torch.manual_seed(0)
    domain, image, style = ref.domain_projector(), ref.image_projector(), ref.style_mapping_projector()
    init = {f"domain.{k}": v.clone() for k, v in domain.state_dict().items()}
    init |= {f"image.{k}": v.clone() for k, v in image.state_dict().items()}
    init |= {f"style.{k}": v.clone() for k, v in style.state_dict().items()}
    source, target = torch.randn(L, B, T, W), torch.randn(L, B, T, W)
    with torch.no_grad():
        outputs = {
            "source_domain": domain(source),
            "target_domain": domain(target),
            "source_image": image(source, 4),
            "target_image": image(target, 4),
            "source_style": style(source),
        }
    given = {
        "source_logits": torch.randn(B, C) * 3,
        "labels": torch.randint(C, (B,)),
        "target_probs": torch.softmax(torch.randn(B, C) * 2, dim=1),
        "source_text": torch.randn(B, C, E),
        "target_text": torch.randn(B, C, E),
    }

    def model(image_x, image_u):
        return (
            given["source_logits"].clone().requires_grad_(),
            given["target_probs"].clone().requires_grad_(),
            domain(image_x),
            style(image_x),
            given["source_text"].clone().requires_grad_(),
            given["target_text"].clone().requires_grad_(),
        )

    params = [*domain.parameters(), *image.parameters(), *style.parameters()]
    trainer = object.__new__(ref.ADCLIPB16)
    trainer.__dict__.update(
        model=model,
        optim=torch.optim.Adam(params, lr=0.01),
        scaler=Scaler(),
        n_cls=C,
        device=torch.device("cpu"),
        cfg=types.SimpleNamespace(TRAINER=types.SimpleNamespace(ADCLIPB16=types.SimpleNamespace(PREC="amp"))),
        update_lr=lambda: None,
    )
    summary = trainer.forward_backward({"img": source, "label": given["labels"]}, {"img": target})
    after = {f"domain.{k}": v.clone() for k, v in domain.state_dict().items()}
    after |= {f"image.{k}": v.clone() for k, v in image.state_dict().items()}
    after |= {f"style.{k}": v.clone() for k, v in style.state_dict().items()}
    fixture = {
        "references": [{"repo": "mainaksingha01/AD-CLIP", "commit": COMMIT}],
        "classnames": [f"class_{i}" for i in range(C)],  # the loss terms' classes (names unused by these parts)
        "settings": {"layers": L, "batch": B, "tokens": T, "width": W, "embed": E, "classes": C, "lr": 0.01},
        "init": init,
        "source_tokens": source,
        "target_tokens": target,
        "outputs": outputs,
        "given": given,
        "terms": {k.removeprefix("loss_"): torch.tensor(v) for k, v in summary.items() if k.startswith("loss")},
        "after_step": after,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, FIXTURE)
    print(f"wrote {FIXTURE}: " + ", ".join(f"{k}={v:.6f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
