"""TMML: class-aware text prompts (CTP) and text-guided feature tuning (TFT) on cached features.

Long et al., "Task-Oriented Multi-Modal Mutual Leaning for Vision-Language Models" (sic), ICCV 2023
(arXiv 2303.17169). No official code was found (the paper lists carry no code link; neither the title nor CTP/TFT
turned up in the code index), and only the abstract could be read: a *class-aware text prompt* injects label-related
image information into each class's prompt (unlike CoCoOp, whose image-conditioned shift is shared by all classes),
*text-guided feature tuning* makes the image feature attend to class-related representations, and a contrastive loss
aligns the two. Everything else is a documented reading, each open detail a Config field marked "assumption".

With x̂ = normalize(f(x)) (the frozen image feature from the feature bank), ŵ_c the frozen class embeddings of the
dataset's hand-crafted template, and CoOp's context v_1..v_M (from ``ctx_init``):

    CTP:  h_c(x) = normalize(x̂ ⊙ ŵ_c)                          the part of the image feature that agrees with class c
          π_c(x) = W_2 · ReLU(W_1 · h_c(x) + b_1) + b_2          (a CoCoOp meta-net, D → D/16 → d_text)
          t_c(x) = normalize(g([SOS][v_1 + γ·π_c(x)] … [v_M + γ·π_c(x)][CLASS_c][.][EOS]))
    TFT:  a(x) = softmax_c(s · x̂ · ŵ_cᵀ),   x̃ = normalize(x̂ + α · Σ_c a_c(x) · ŵ_c Uᵀ)      (U: D × D, zero at start)
    logits_c(x) = s · x̃ · t_c(x)ᵀ,   L = CE(logits(x), y)

Assumptions: the class-aware input h_c (the elementwise product with the frozen class embedding), the meta-net's
shape (CoCoOp's), ``image_weight`` γ = 1; TFT's attention over the frozen class embeddings of the pooled feature
(so TMML stays a feature-bank method), its projection U initialised at zero (TFT starts as the identity) and
``tft_weight`` α = 1; the contrastive loss read as the cross-entropy over the classes (no extra term); CoCoOp's
preset (4 tokens from "a photo of a", batch 1, 10 epochs, SGD lr 0.002), as TMML compares with CoCoOp.

Reduction, checked in ``tests/test_tmml.py``: with γ = 0 and α = 0 (the image terms zeroed) the logits, the loss and
the context's gradient are CoOp's; the class-aware conditioning is checked by permuting the classes, and h_c and TFT
by hand on a toy. Costs as CoCoOp: B × C prompts through the text encoder per batch.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.cocoop import CoCoOp, CoCoOpConfig


@dataclasses.dataclass(frozen=True)
class TMMLConfig(CoCoOpConfig):
    image_weight: float = 1.0  # assumption: γ, the weight of the class-aware image term in the prompts (CTP)
    tft_weight: float = 1.0  # assumption: α, the weight of the text-guided feature tuning (TFT)


def class_aware_inputs(x_hat: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, D), (C, D) -> (B, C, D): h_c(x) = normalize(x̂ ⊙ ŵ_c)."""
    return normalize(x_hat.unsqueeze(1) * classes.unsqueeze(0))


def text_guided(x_hat: torch.Tensor, classes: torch.Tensor, projection: nn.Linear, scale: float, weight: float):
    """TFT: x̃ = normalize(x̂ + α · Σ_c softmax_c(s · x̂ · ŵ_cᵀ) · ŵ_c Uᵀ)."""
    attention = torch.softmax(scale * x_hat @ classes.T, dim=-1)  # (B, C)
    return normalize(x_hat + weight * projection(attention @ classes))


@register
class TMML(CoCoOp):
    name = "tmml"
    paper = "Long et al., Task-Oriented Multi-Modal Mutual Leaning for Vision-Language Models, ICCV 2023"
    description = (
        "class-aware image-conditioned text prompts and text-guided tuning of the image feature "
        "(CTP + TFT; a documented reading, no official code)"
    )
    Config = TMMLConfig
    batchable = False  # not checked in the batched trainer (vlprompt.training.batched)
    class_embeddings: torch.Tensor  # (C, D) ŵ, the frozen classifier of the current classes (a buffer)

    def __init__(self, config: TMMLConfig, ctx: MethodContext):
        self.frozen_backbone, self.frozen_template = ctx.backbone, ctx.template
        super().__init__(config, ctx)
        self.register_buffer("class_embeddings", self.frozen_classifier(ctx.classnames), persistent=False)
        dim = ctx.backbone.embed_dim
        self.tft = nn.Linear(dim, dim, bias=False).to(ctx.device)
        nn.init.zeros_(self.tft.weight)

    def frozen_classifier(self, classnames: list[str]) -> torch.Tensor:
        return text_classifier(self.frozen_backbone, [self.frozen_template], classnames)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self.class_embeddings = self.frozen_classifier(classnames)

    def context_bias(self, x_hat: torch.Tensor) -> torch.Tensor:  # CTP: (B, C, width), γ · π_c(x)
        return self.config.image_weight * self.meta_net(class_aware_inputs(x_hat, self.class_embeddings))

    def query(self, x_hat: torch.Tensor) -> torch.Tensor:  # TFT
        return text_guided(x_hat, self.class_embeddings, self.tft, self.logit_scale, self.config.tft_weight)
