"""Zero-shot CLIP with the dataset's hand-crafted template (Radford et al., ICML 2021).

Reference: KaiyangZhou/CoOp, trainers/zsclip.py (``ZeroshotCLIP``, read, not copied): the dataset's template
from CoOp's table (``vlprompt/data/templates.json``), class names with "_" written as spaces.

    w_c = normalize(E_text(template.format(classname_c)))
    logits(x) = s · normalize(f(x)) · w_cᵀ,   s = CLIP's logit scale (exp of the learned temperature)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import torch

from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import Method, MethodContext, normalize, register


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    # None: the dataset's hand-crafted template (CoOp's); a table of data/method_templates.json; or a template
    template: str | None = None


class TemplateConfig(Protocol):
    """What ZeroShot reads of its config; methods built on it (FuDD) bring configs of their own."""

    @property
    def template(self) -> str | None: ...


@register
class ZeroShot(Method):
    name = "zeroshot"
    family = "zero-shot"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    description = "zero-shot CLIP with the dataset's hand-crafted prompt"
    Config: ClassVar[type] = ZeroShotConfig  # subclasses bring configs of their own (CuPL, FuDD)
    needs_training = False

    weights: torch.Tensor  # (C, D) normalised text features of the current classes

    def __init__(self, config: TemplateConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.backbone = ctx.backbone
        self.templates = ctx.templates(config.template)
        self.set_classes(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        self.register_buffer("weights", text_classifier(self.backbone, self.templates, classnames), persistent=False)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.weights.T
