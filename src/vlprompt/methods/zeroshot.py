"""Zero-shot CLIP with the dataset's hand-crafted template (Radford et al., ICML 2021).

    w_c = normalize(E_text(template.format(classname_c)))
    logits(x) = s · normalize(f(x)) · w_cᵀ,   s = CLIP's logit scale (exp of the learned temperature)
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.backbone import encode_prompts
from vlprompt.methods.base import Method, MethodContext, normalize, register


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    template: str | None = None  # None: the dataset's hand-crafted template


@register
class ZeroShot(Method):
    name = "zeroshot"
    family = "zero-shot"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    description = "zero-shot CLIP with the dataset's hand-crafted prompt"
    Config = ZeroShotConfig
    needs_training = False

    def __init__(self, config: ZeroShotConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.backbone = ctx.backbone
        self.template = config.template or ctx.template
        self.set_classes(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        texts = [self.template.format(c) for c in classnames]
        self.register_buffer("weights", encode_prompts(self.backbone, texts), persistent=False)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.weights.T
