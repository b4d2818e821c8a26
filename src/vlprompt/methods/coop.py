"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

Reference implementation followed: KaiyangZhou/CoOp, trainers/coop.py (read, not copied).

Prompt for class c: t_c = [SOS][v_1 … v_M][CLASS_c][.][EOS] with learnable context vectors v
(shared by all classes, or class-specific with ``csc``), initialised from the embedding of
``ctx_init`` ("a photo of a", M = 4) or N(0, 0.02²).

    w_c = normalize(g(t_c)),  x̂ = normalize(f(x)),  logits_c(x) = s · x̂ · w_cᵀ
    L = CE(logits(x), y)

Only v is trained; the image and text encoders stay frozen. Trains on cached image features
(augmented views of the few-shot images), which gives the same gradients as the reference's
image encoder in the loop up to the finite set of augmentations.
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.clip.prompting import ClassPrompts, PromptLearner
from vlprompt.methods.base import Method, MethodContext, TrainConfig, normalize, register


@dataclasses.dataclass(frozen=True)
class CoOpConfig(TrainConfig):
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"  # None: random init (the few-shot paper setting, n_ctx 16)
    csc: bool = False  # class-specific context
    class_token_position: str = "end"  # end | front | middle (front/middle need ctx_init None)


@register
class CoOp(Method):
    name = "coop"
    family = "text prompt"
    paper = "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022"
    description = "learned continuous context shared by all classes"
    Config = CoOpConfig
    batchable = True  # its loss draws no randomness: seeds train together (vlprompt.training.batched)
    prompt_learner: ClassPrompts  # CoOp's own is a PromptLearner; subclasses may bring other prompts (ATPrompt)

    def __init__(self, config: CoOpConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        gen = torch.Generator().manual_seed(ctx.seed)
        self.prompt_learner = PromptLearner(
            ctx.encoder,
            ctx.backbone.tokenizer,
            ctx.classnames,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            csc=config.csc,
            position=config.class_token_position,
            generator=gen,
        )

    def set_classes(self, classnames: list[str]) -> None:
        self.prompt_learner.set_classes(classnames)

    def text_features(self) -> torch.Tensor:
        return normalize(self.prompt_learner())  # (n_cls, D)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.text_features().T


@dataclasses.dataclass(frozen=True)
class CoOpCSCConfig(CoOpConfig):
    csc: bool = True


@register
class CoOpCSC(CoOp):
    name = "coop_csc"
    description = "CoOp with class-specific context (one set of context vectors per class)"
    Config = CoOpCSCConfig
    batchable = True  # its loss draws no randomness: seeds train together (vlprompt.training.batched)
    supports_new_classes = False

    def set_classes(self, classnames: list[str]) -> None:
        """Class-specific context exists only for the trained classes: unseen classes cannot be classified."""
        if list(classnames) != self.prompt_learner.classnames:
            raise NotImplementedError("class-specific context cannot classify classes it was not trained on")
