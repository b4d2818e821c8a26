"""MaPLe: multi-modal prompt learning (IVLP with vision prompts coupled to the language prompts).

Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023. Reference implementation followed:
muzairkhattak/multimodal-prompt-learning, trainers/maple.py (``MultiModalPromptLearner``) and
clip/model.py (``ResidualAttentionBlock_MaPLe``) (read, not copied).

Text prompts as IVLP with n tokens and depth J: T_0 = c (initialised from the first n tokens of
``ctx_init``, the rest of it fixed text), T_j ~ N(0, 0.02²) for 1 <= j < J. The vision prompts are
not free parameters but images of the text prompts under the coupling functions F_j (one linear
layer d_t -> d_v per depth, PyTorch's default initialisation):

    P_j = F_j(T_j) = T_j W_jᵀ + b_j,   j = 0 .. J-1
    w_c = normalize(g(prompt_c; T)),  x̂ = normalize(f(x; P)),  logits = s · x̂ · wᵀ,  L = CE

Trained: c, T_1..T_{J-1}, W_j, b_j. Preset: configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml
(2 tokens, so "a photo" learnable and "of a" fixed; depth 9; lr 0.0035; batch 4; 5 epochs). For
cross-dataset transfer the reference uses depth 3, lr 0.0026, 2 epochs (set them as overrides).
Depth 0 (allowed here, not in the reference) is zero-shot CLIP with the hand-crafted template.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.methods.base import MethodContext, TrainConfig, register
from vlprompt.methods.ivlp import IVLP


@dataclasses.dataclass(frozen=True)
class MaPLeConfig(TrainConfig):
    epochs: int = 5
    batch_size: int = 4
    lr: float = 0.0035
    n_ctx: int = 2  # tokens per prompted block, shared by both towers
    depth: int = 9  # prompted blocks in both towers, capped at the shallower tower
    ctx_init: str | None = "a photo of a"  # its first n_ctx tokens initialise the text context
    init_std: float = 0.02  # deeper text prompts ~ N(0, init_std²)
    template: str | None = None  # the hand-crafted prompt used at depth 0; None: the dataset's


def coupling(d_in: int, d_out: int, gen: torch.Generator) -> nn.Linear:
    """A linear coupling function with nn.Linear's default initialisation, drawn from ``gen``."""
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(d_in)
        nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return layer


@register
class MaPLe(IVLP):
    name = "maple"
    paper = "Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023"
    description = "deep text prompts; vision prompts are linear projections of them (coupling functions)"
    Config = MaPLeConfig

    def build_prompts(self, config: MaPLeConfig, ctx: MethodContext, gen: torch.Generator) -> None:
        model = self.frozen.model
        depth = min(
            deep_prompts.cap_depth(config.depth, deep_prompts.text_layers(model), "text"),
            deep_prompts.cap_depth(config.depth, deep_prompts.vision_layers(model), "vision"),
        )
        self.vision_ctx = None
        self.make_text_prompts(config.n_ctx, depth, config.ctx_init, config.init_std, gen, ctx.classnames)
        d_t, d_v = deep_prompts.text_width(model), deep_prompts.vision_width(model)
        device = next(model.parameters()).device
        self.couplings = nn.ModuleList(coupling(d_t, d_v, gen) for _ in range(self.depth_text)).to(device)

    def vision_prompts(self) -> list[torch.Tensor]:
        return [f(t) for f, t in zip(self.couplings, self.text_prompts(), strict=True)]
