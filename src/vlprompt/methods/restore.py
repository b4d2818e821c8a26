"""RESTORE: feature-shift consistency for prompt learning (Yang et al., "RESTORE: Towards Feature Shift for
Vision-Language Prompt Learning", ECCV 2024, arXiv 2403.06136), our reading on the cached feature bank.

No official code was found (searched GitHub for the title, the method and the authors): what follows is a
documented reading of the paper's abstract and summaries, every unknown detail a named ``Config`` option marked
"assumption". The paper builds on multi-modal deep prompts (MaPLe) and measures feature shifts layer by layer in
both encoders; on cached image features only the final embeddings exist, so this version measures them there,
learns CoOp's text context, and puts the "surgery" adapters on the final features of both modalities.

Feature shift = how far a modality's embedding moves from the frozen CLIP's once the learned parts are in. With
x̂ = normalize(f(x)) the frozen image feature, h_c = normalize(E_text(template(c))) the hand-crafted prompt's
feature and w_c = normalize(g(t_c)) CoOp's prompted text feature:

    S_v(x̂) = x̂ + A_v(x̂),  S_t(w) = w + A_t(w)      surgery adapters: A = Linear(D, D/r) → ReLU → Linear(D/r, D),
                                                    the last layer initialised to zero (identity at the start)
    x̃ = normalize(S_v(x̂)),  w̃_c = normalize(S_t(w_c))
    δ_v = x̃ − x̂  (per image),  δ_t = w̃_c − h_c  (per class)
    L_fsc = ( mean_b ‖δ_v,b‖ − mean_c ‖δ_t,c‖ )²     the two modalities must shift by the same amount
    logits = s · x̃ · W̃ᵀ,   L = CE(logits, y) + λ L_fsc

so the image side (which has no prompt on cached features) is moved by its adapter as far as the text side is
moved by the prompt and its adapter, and neither can drift alone. New classes use the trained context and text
adapter with their own names. Optimisation: CoOp's base-to-new preset (4 tokens from "a photo of a", batch 32,
200 epochs, SGD lr 0.002; assumption: the paper trains MaPLe's prompts with MaPLe's schedule); where the
dataset's template is "a photo of a {}." the text shift starts at 0.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import class_prompts
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class RESTOREConfig(CoOpConfig):
    shift_weight: float = 1.0  # λ, weight of the feature-shift consistency (assumption: not known here)
    adapter_reduction: int = 4  # surgery adapter bottleneck D -> D / r (assumption: CLIP-Adapter's r)
    template: str | None = None  # hand-crafted prompt the text shift is measured from; None: the dataset's


class ResidualAdapter(nn.Module):
    """x + Linear(D/r, D)(ReLU(Linear(D, D/r)(x))), the last layer zero-initialised (identity at the start)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


def shift_consistency(delta_image: torch.Tensor, delta_text: torch.Tensor) -> torch.Tensor:
    """(mean ‖δ_v‖ − mean ‖δ_t‖)² for (B, D) image and (C, D) text shifts."""
    return (delta_image.norm(dim=-1).mean() - delta_text.norm(dim=-1).mean()).pow(2)


@register
class RESTORE(CoOp):
    name = "restore"
    paper = "Yang et al., RESTORE: Towards Feature Shift for Vision-Language Prompt Learning, ECCV 2024"
    description = "CoOp + surgery adapters on both modalities, their feature shifts kept equal (feature-bank reading)"
    Config = RESTOREConfig

    hand_crafted: torch.Tensor  # (C, D) the hand-crafted prompts' normalised features

    def __init__(self, config: RESTOREConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.backbone, self.template = ctx.backbone, config.template or ctx.template
        dim = ctx.backbone.embed_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.image_surgery = ResidualAdapter(dim, config.adapter_reduction).to(ctx.device)
            self.text_surgery = ResidualAdapter(dim, config.adapter_reduction).to(ctx.device)
        self.set_hand_crafted(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self.set_hand_crafted(classnames)

    def set_hand_crafted(self, classnames: list[str]) -> None:
        texts = class_prompts(self.template, classnames)
        self.register_buffer("hand_crafted", encode_prompts(self.backbone, texts), persistent=False)  # (C, D)

    def text_features(self) -> torch.Tensor:
        return normalize(self.text_surgery(super().text_features()))

    def image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return normalize(self.image_surgery(normalize(image_features)))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(image_features) @ self.text_features().T

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x_hat = normalize(image_features)
        image, text = self.image_features(image_features), self.text_features()
        ce = F.cross_entropy(self.logit_scale * image @ text.T, labels)
        fsc = shift_consistency(image - x_hat, text - self.hand_crafted)
        return ce + self.config.shift_weight * fsc, {"ce": ce.item(), "shift": fsc.item()}
