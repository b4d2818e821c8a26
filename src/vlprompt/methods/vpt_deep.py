"""VPT-deep: deep visual prompts in CLIP's image encoder, fixed hand-crafted text classifier.

Jia et al., "Visual Prompt Tuning", ECCV 2022, in the CLIP form used as a baseline by MaPLe
(Khattak et al., CVPR 2023). Reference implementation followed: muzairkhattak/multimodal-prompt-
learning, trainers/vpt.py and clip/model.py (read, not copied).

With J = depth (capped at the tower's blocks) and n tokens per block, P_j ∈ R^{n×d_v} ~ N(0, 0.02²):

    block j input:  [CLS, patches, P_j]  for j < J (P_0 through ln_pre; see vlprompt.clip.deep_prompts)
    x̂ = normalize(f(x; P_0..P_{J-1})),   w_c = normalize(g(template(c)))  (frozen)
    logits_c(x) = s · x̂ · w_cᵀ,   L = CE(logits(x), y)

Only the P_j train. Preset: configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (8 tokens, depth 12,
SGD lr 0.0025, batch 4, 5 epochs, constant warm-up 1e-5 for one epoch). The text prompt is the reference's,
"a photo of a {}." for every dataset (trainers/vpt.py ``FixedEmbeddings``; ``template="vpt"``, the table in
data/method_templates.json; the pocket datasets, unknown to the reference, keep their own);
``template=None`` takes the dataset's hand-crafted template instead (CoOp's, the zero-shot baseline's),
with which depth 0 is exactly zero-shot CLIP. IVLP, MaPLe and PromptSRC keep the
dataset's template (used at depth 0 and by PromptSRC's ``teacher_templates="dataset"``).

This module also holds what every encoder-in-the-loop prompt method shares (IVLP, MaPLe and PromptSRC
derive from :class:`VPTDeep`): the frozen CLIP kept out of the module tree, image features through
the prompted tower, logits, and the eval-time cache of the text classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import Method, MethodContext, TrainConfig, normalize, register


@dataclasses.dataclass(frozen=True)
class VPTDeepConfig(TrainConfig):
    epochs: int = 5
    batch_size: int = 4
    lr: float = 0.0025
    n_ctx_vision: int = 8
    depth_vision: int = 12  # blocks with their own prompts, capped at the tower's; 0: no prompts (zero-shot)
    init_std: float = 0.02  # prompts ~ N(0, init_std²); 0 gives zero prompts
    template: str | None = "vpt"  # fixed text prompt: a template table, a template; None: the dataset's (CoOp's)


class Frozen:
    """The frozen CLIP pieces a method uses, held outside ``nn.Module`` registration so that they stay
    out of the method's ``state_dict``, ``parameters()`` and ``train()``."""

    def __init__(self, ctx: MethodContext):
        self.backbone = ctx.backbone
        self.model = ctx.backbone.model
        self.encoder = ctx.encoder
        self.tokenizer = ctx.backbone.tokenizer


@register
class VPTDeep(Method):
    name = "vpt_deep"
    family = "deep prompt"
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022 (CLIP variant as in Khattak et al., MaPLe, CVPR 2023)"
    description = "deep learnable tokens in every image-encoder block; fixed hand-crafted text prompts"
    Config: ClassVar[type] = VPTDeepConfig  # IVLP's and MaPLe's configs are their own
    inputs = "images"
    # its loss draws no randomness and calls the image tower once, through ``image_features``: seeds train together
    # (vlprompt.training.batched_images); IVLP, MaPLe, ... do not inherit this (vlprompt.training.batched.can_batch)
    batchable = True

    fixed_text: torch.Tensor  # (C, D) normalised features of the fixed hand-crafted prompts

    def __init__(self, config, ctx: MethodContext):
        super().__init__(config, ctx)
        self.frozen = Frozen(ctx)
        self.templates = ctx.templates(getattr(config, "template", None))
        self._text_cache: tuple | None = None
        gen = torch.Generator().manual_seed(ctx.seed)
        self.build_prompts(config, ctx, gen)
        self.set_classes(ctx.classnames)

    # -- construction -------------------------------------------------------------------------
    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        self.vision_ctx = self.make_vision_ctx(config.n_ctx_vision, config.depth_vision, config.init_std, gen)

    def make_vision_ctx(self, n_ctx: int, depth: int, std: float, gen: torch.Generator) -> nn.Parameter | None:
        """(J, n, d_v) prompts for the first J vision blocks, or None when J or n is 0."""
        model = self.frozen.model
        depth = deep_prompts.cap_depth(depth, deep_prompts.vision_layers(model), "vision")
        if depth == 0 or n_ctx == 0:
            return None
        init = torch.randn(depth, n_ctx, deep_prompts.vision_width(model), generator=gen) * std
        return nn.Parameter(init.to(next(model.parameters()).device))

    def set_classes(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        fixed = text_classifier(self.frozen.backbone, self.templates, classnames)
        self.register_buffer("fixed_text", fixed, persistent=False)
        self._text_cache = None

    # -- the model ----------------------------------------------------------------------------
    def vision_prompts(self) -> list[torch.Tensor]:
        return [] if self.vision_ctx is None else list(self.vision_ctx.unbind(0))

    # Set by a trainer that runs several runs' images through the tower in one pass
    # (vlprompt.training.batched_images): called instead of deep_prompts.encode_image as
    # ``image_intercept(images, prompts)``.
    image_intercept: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised features of the images through the prompted image tower."""
        if self.image_intercept is not None:
            return normalize(self.image_intercept(images, self.vision_prompts()))
        return normalize(deep_prompts.encode_image(self.frozen.model, images, self.vision_prompts()))

    def text_features(self) -> torch.Tensor:
        """(n_cls, D) L2-normalised class embeddings."""
        return self.fixed_text

    def classifier(self) -> torch.Tensor:
        """The text features, computed once per parameter state when no gradient is needed (evaluation)."""
        if torch.is_grad_enabled():
            return self.text_features()
        key = tuple(p._version for p in self.parameters() if p.requires_grad)
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.text_features().detach())
        return self._text_cache[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(images) @ self.classifier().T

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_trainable_state(state)
        self._text_cache = None
