"""APT: approximated prompt tuning, an approximated prompt contribution added to the attention output of the image
blocks instead of prompt tokens in the attention.

Wu et al., "Approximated Prompt Tuning for Vision-Language Pre-trained Models", arXiv 2306.15706. Reference
implementation read (not copied): DoubtedSteam/APT at commit d66bbc4, ``ViLT/vilt/modules/vision_transformer_apt.py``
(``approximate_prompt``, and ``Attention.forward``, where it acts) and ``METER/meter/modules/bert_model_apt.py``
(the same module in METER's fusion layers). The code covers ViLT and METER only; the paper's CLIP classification
setting is not in it, so the CLIP wiring below is a reading.

In block j of the image tower (pre-norm; h = ln_1(x) the attention's input, a = attn(h) its output after the output
projection), with a memory M_j ∈ R^{P×d} of approximated prompt tokens, a low-rank map U_j D_j (D_j ∈ R^{r×d},
U_j ∈ R^{d×r}) and a scalar s_j::

    K_j = M_j + M_j D_jᵀ U_jᵀ                      (keys: the memory plus a low-rank correction)
    A = ReLU(h K_jᵀ)                               (B, N, P), then dropout
    e = A M_j,   w = max_p A (no gradient)          (the approximated prompt contribution and its weight)
    a ← (a + e · w) · exp(s_j)
    x ← x + a, then the block's MLP as usual        (vlprompt.clip.attention_output)

The class embeddings are CLIP's fixed hand-crafted prompts ("a photo of a {}.", VPT-deep's table), the logits
s · x̂ · wᵀ and the loss CE, as VPT-deep's. Only M, D, U and s train (the reference also trains ViLT's task head,
which CLIP's text classifier replaces). Initialisation as the reference's: M ~ N(0, 0.02²), D ~ N(0, 1), U = 0,
s = 0, so at the start K = M.

Reductions, checked exactly in ``tests/test_apt.py``: with M = 0 (and s = 0) every block's attention output is left
as it is and APT is zero-shot CLIP with the fixed prompts (VPT-deep at depth 0); the module is also checked on a
hand-computed toy and against the reference module's own outputs and gradients
(``tests/reference/fixtures/apt_module.pt``, written by ``tests/reference/regenerate_apt.py``).

Assumptions (no CLIP code; the paper's CLIP numbers could not be read):

* the image tower only (``depth_vision`` blocks, all by default): the reference adds APT to the blocks of the
  models it tunes; for CLIP the text classifier stays the hand-crafted one;
* ``memory`` P = 50 and ``rank`` r = 4: the ViLT module's values (METER's fusion layers use P = 200);
* the optimiser preset is VPT-deep's CLIP preset (SGD lr 0.0025, batch 4, 5 epochs), the deep-prompt baseline
  APT replaces; ``attn_dropout`` 0.0 (the dropout on A, ViLT's attention dropout, 0 there).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlprompt.clip import attention_output, deep_prompts
from vlprompt.methods.base import MethodContext, TrainConfig, normalize, register
from vlprompt.methods.vpt_deep import VPTDeep


@dataclasses.dataclass(frozen=True)
class APTConfig(TrainConfig):
    epochs: int = 5  # assumption: VPT-deep's CLIP preset (no CLIP setting in the reference)
    batch_size: int = 4  # assumption: as above
    lr: float = 0.0025  # assumption: as above
    depth_vision: int = 12  # assumption: image blocks with an approximated prompt, capped at the tower's (all)
    memory: int = 50  # assumption: P, approximated prompt tokens per block (ViLT's 50; METER's 200)
    rank: int = 4  # assumption: r of the keys' low-rank correction (the reference's 4)
    attn_dropout: float = 0.0  # assumption: dropout on the approximated attention A (ViLT's attn_drop, 0)
    template: str | None = "vpt"  # fixed text prompt, as VPT-deep's; None: the dataset's (CoOp's)


class ApproximatePrompt(nn.Module):
    """One block's approximated prompt: ``forward(a, h)`` is the new attention output (see the module docstring)."""

    def __init__(self, width: int, memory: int, rank: int, dropout: float, generator: torch.Generator):
        super().__init__()
        self.memory = nn.Parameter(torch.randn(memory, width, generator=generator) * 0.02)  # M (P, d)
        self.down = nn.Parameter(torch.randn(rank, width, generator=generator))  # D (r, d)
        self.up = nn.Parameter(torch.zeros(width, rank))  # U (d, r)
        self.scale = nn.Parameter(torch.zeros(1))  # s
        self.dropout = nn.Dropout(dropout)

    def forward(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        m = self.memory.to(inp.dtype)
        keys = m + (m @ self.down.to(inp.dtype).T) @ self.up.to(inp.dtype).T  # (P, d)
        weights = self.dropout(torch.relu(inp @ keys.T))  # (..., P)
        e = weights @ m  # (..., d)
        strength = weights.max(dim=-1, keepdim=True).values.detach()  # (..., 1)
        return (out + e * strength) * self.scale.to(out.dtype).exp()


@register
class APT(VPTDeep):
    name = "apt"
    paper = "Wu et al., Approximated Prompt Tuning for Vision-Language Pre-trained Models, arXiv 2306.15706"
    description = (
        "approximated prompt tokens added to every image block's attention output instead of prompt tokens "
        "(a reading of the ViLT/METER code for CLIP); fixed hand-crafted text prompts"
    )
    Config = APTConfig

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        model = self.frozen.model
        depth = deep_prompts.cap_depth(config.depth_vision, deep_prompts.vision_layers(model), "vision")
        width = deep_prompts.vision_width(model)
        self.vision_ctx = None  # no prompt tokens
        device = next(model.parameters()).device
        self.approx = nn.ModuleList(
            [ApproximatePrompt(width, config.memory, config.rank, config.attn_dropout, gen) for _ in range(depth)]
        ).to(device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        with attention_output.attention_outputs(self.frozen.model, list(self.approx), "vision"):
            return normalize(self.frozen.model.encode_image(images))
