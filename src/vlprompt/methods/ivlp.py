"""IVLP: independent deep vision and language prompts (VPT-deep + deep text prompts).

The "independent V-L prompting" baseline of Khattak et al., "MaPLe: Multi-modal Prompt Learning",
CVPR 2023, and the base model of PromptSRC. Reference implementation followed:
muzairkhattak/multimodal-prompt-learning, trainers/independentVL.py and clip/model.py (read, not copied).

Vision: as VPT-deep (n_v tokens P_j in the first J_v image blocks). Text, n_t context tokens:

    block 0 input:  [SOS][c_1 .. c_{n_t}][rest of ctx_init][CLASS_c][.][EOT]   (c = learnable context)
    block j input:  positions 1..n_t replaced by T_j ∈ R^{n_t×d_t},  1 <= j < J_t,  T_j ~ N(0, 0.02²)
    w_c = normalize(g(prompt_c; T)),  x̂ = normalize(f(x; P)),  logits = s · x̂ · wᵀ,  L = CE

The context c is initialised from the first n_t tokens of ``ctx_init`` and the remaining words stay
fixed text before the class name, as the reference does: with n_t = 2 and "a photo of a" the prompt
is "[c_1 c_2] of a {class}." (c initialised from "a photo"). When n_t exceeds the tokens of
``ctx_init`` (or it is None) c ~ N(0, 0.02²) and the prompt is "[c_1 .. c_n] {class}.".
``depth_text`` 0 keeps the hand-crafted prompt (VPT-deep). Preset: configs/trainers/IVLP/
vit_b16_c2_ep5_batch4_2+2ctx.yaml (2+2 tokens, depth 12, lr 0.0035, batch 4, 5 epochs); the
PromptSRC repository's IVLP uses 4+4 tokens, depth 9 and 20 epochs (override to reproduce it).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.clip.prompting import PromptLearner, prompt_name
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.vpt_deep import VPTDeep, VPTDeepConfig


@dataclasses.dataclass(frozen=True)
class IVLPConfig(VPTDeepConfig):
    lr: float = 0.0035
    n_ctx_vision: int = 2
    n_ctx_text: int = 2
    depth_text: int = 12  # text blocks with their own context, capped; 0: the hand-crafted prompt
    ctx_init: str | None = "a photo of a"  # the first n_ctx_text tokens initialise the context
    template: str | None = None  # hand-crafted prompt at depth_text 0: the dataset's (CoOp's)


def split_ctx_init(tokenizer, ctx_init: str | None, n_ctx: int) -> tuple[str | None, str]:
    """(words initialising the n_ctx context tokens, fixed words after them) for ``ctx_init``.

    (None, "") means random initialisation: no ``ctx_init``, or fewer tokens in it than ``n_ctx``.
    """
    if not ctx_init:
        return None, ""
    words = prompt_name(ctx_init).split()

    def count(text: str) -> int:
        return int(tokenizer([text]).argmax(-1).item()) - 1 if text else 0

    if n_ctx > count(" ".join(words)):
        return None, ""
    for k in range(1, len(words) + 1):
        if count(" ".join(words[:k])) == n_ctx:
            return " ".join(words[:k]), " ".join(words[k:])
    raise MethodError(
        f"the first {n_ctx} tokens of ctx_init {ctx_init!r} do not end at a word boundary; "
        f"choose n_ctx_text to match whole words"
    )


@register
class IVLP(VPTDeep):
    name = "ivlp"
    paper = "Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023 (independent V-L prompting baseline)"
    description = "independent deep prompts in the image and the text encoder"
    Config: ClassVar[type] = IVLPConfig  # MaPLe brings a config of its own

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        super().build_prompts(config, ctx, gen)
        self.make_text_prompts(
            config.n_ctx_text, config.depth_text, config.ctx_init, config.init_std, gen, ctx.classnames
        )

    def make_text_prompts(
        self, n_ctx: int, depth: int, ctx_init: str | None, std: float, gen: torch.Generator, classnames: list[str]
    ) -> None:
        """The layer-0 context (a CoOp prompt learner) and the (J_t - 1, n, d_t) deeper text prompts."""
        encoder = self.frozen.encoder
        self.depth_text = deep_prompts.cap_depth(depth, deep_prompts.text_layers(encoder), "text")
        self.prompt_learner, self.text_deep, self.fixed_words = None, None, ""
        if self.depth_text == 0 or n_ctx == 0:
            self.depth_text = 0
            return
        init, self.fixed_words = split_ctx_init(self.frozen.tokenizer, ctx_init, n_ctx)
        self.prompt_learner = PromptLearner(
            encoder,
            self.frozen.tokenizer,
            self._prompt_names(classnames),
            n_ctx=n_ctx,
            ctx_init=init,
            init_std=std,
            generator=gen,
        )
        if self.depth_text > 1:
            deep = torch.randn(self.depth_text - 1, n_ctx, deep_prompts.text_width(encoder), generator=gen) * std
            self.text_deep = nn.Parameter(deep.to(self.prompt_learner.ctx.device))

    def _prompt_names(self, classnames: list[str]) -> list[str]:
        return [f"{self.fixed_words} {c}".strip() for c in classnames]

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        prompt_learner = getattr(self, "prompt_learner", None)  # None until build_prompts has run
        if prompt_learner is not None:
            prompt_learner.set_classes(self._prompt_names(classnames))

    def text_prompts(self) -> list[torch.Tensor]:
        """The context of every prompted text block: layer 0 (the prompt learner's) then the deeper ones."""
        if self.prompt_learner is None:
            return []
        return [self.prompt_learner.ctx] + ([] if self.text_deep is None else list(self.text_deep.unbind(0)))

    def text_features(self) -> torch.Tensor:
        if self.prompt_learner is None:
            return super().text_features()
        pl = self.prompt_learner
        return normalize(deep_prompts.encode_text(pl.encoder, pl.prompts(), pl.eot, self.text_prompts()[1:]))
