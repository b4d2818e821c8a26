"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2024,
arXiv 2110.04544), visual adapter.

Reference implementation read (not copied): gaopengcuhk/CLIP-Adapter, clip_adapter.py (a Dassl trainer on
CoOp's code base and configs). On the unnormalised image feature f (D):

    A(f) = ReLU(W_2 · ReLU(W_1 · f)),   W_1: D → D/4, W_2: D/4 → D, no biases
    f' = r · A(f) + (1 − r) · f,        r = 0.2 (the residual ratio)
    logits(x) = s · normalize(f') · w_cᵀ,   w_c = normalize(E_text(template.format(classname_c)))
    L = CE(logits, y)

The classifier is the frozen zero-shot text classifier of the dataset's hand-crafted template, so new
classes only need their text weights (``set_classes``). Only W_1, W_2 train (SGD, CoOp's schedule).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import Method, MethodContext, TrainConfig, normalize, register


@dataclasses.dataclass(frozen=True)
class CLIPAdapterConfig(TrainConfig):
    reduction: int = 4  # bottleneck D -> D / reduction -> D
    ratio: float = 0.2  # residual ratio r: weight of the adapted feature
    template: str | None = None  # None: the dataset's hand-crafted template (CoOp's, as clip_adapter.py)


class Adapter(nn.Sequential):
    def __init__(self, dim: int, reduction: int):
        super().__init__(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(),
        )


@register
class CLIPAdapter(Method):
    name = "clip_adapter"
    family = "adapter"
    paper = "Gao et al., CLIP-Adapter: Better Vision-Language Models with Feature Adapters, IJCV 2024"
    description = "residual bottleneck MLP on the image feature, zero-shot text classifier"
    Config = CLIPAdapterConfig

    weights: torch.Tensor  # (C, D) normalised text features of the current classes

    def __init__(self, config: CLIPAdapterConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if not 0 <= config.ratio <= 1 or config.reduction < 1:
            raise ValueError(f"clip_adapter: ratio must lie in [0, 1] and reduction be >= 1, got {config}")
        self.backbone = ctx.backbone
        self.templates = ctx.templates(config.template)
        with torch.random.fork_rng(devices=[]):  # the adapter's init depends on the run seed only
            torch.manual_seed(ctx.seed)
            self.adapter = Adapter(ctx.backbone.embed_dim, config.reduction).to(ctx.device)
        self.set_classes(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        self.register_buffer("weights", text_classifier(self.backbone, self.templates, classnames), persistent=False)

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """f' = r·A(f) + (1 − r)·f on unnormalised (B, D) features."""
        f = image_features.float()
        return self.config.ratio * self.adapter(f) + (1 - self.config.ratio) * f

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(self.adapt(image_features)) @ self.weights.T
