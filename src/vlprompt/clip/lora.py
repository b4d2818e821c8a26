"""Low-rank adapters (LoRA) on the attention projections of either CLIP tower, as a context.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, in the form CLIP-LoRA uses (Zanella &
Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024; MaxZanella/CLIP-LoRA at 358f0d7,
``loralib/layers.py`` ``LinearLoRA`` and ``PlainMultiheadAttentionLoRA``, read, not copied). For a projection
W ∈ R^{d_out×d_in} (query, key, value of ``in_proj_weight``, or the output projection) of block l:

    y = x Wᵀ + b + s · drop(x) Aᵀ Bᵀ,     A ∈ R^{r×d_in},  B ∈ R^{d_out×r},  s = α / √r

with ``drop`` a dropout applied to the adapter's input only (one independent mask per projection, training mode
only), A initialised as ``kaiming_uniform_(a=√5)`` and B as zeros, so a fresh adapter changes nothing. Note the
scale α/√r of CLIP-LoRA (the LoRA paper's is α/r).

:func:`lora_attention` is the extension point: within the block, the attention of every adapted block of the
shared frozen backbone computes its projections with the adapters (an instance attribute ``attention`` shadows the
block's method); on exit the backbone is exactly as before, so other methods and runs sharing it see no change.
Adapters live in a :class:`LoRAAdapters` module owned by the method (its parameters are what trains and is saved).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import deep_prompts

TOWERS = ("text", "vision")
TARGETS = ("q", "k", "v", "o")


class LoRAError(ValueError):
    """Adapters that do not fit the model (unknown tower or projection, a layer it does not have)."""


def _blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    """The residual attention blocks of ``tower``."""
    if tower == "vision":
        transformer = deep_prompts._visual(model).transformer
    elif tower == "text":
        transformer = model.transformer
    else:
        raise LoRAError(f"unknown tower {tower!r}; use one of {TOWERS}")
    return cast(nn.ModuleList, cast(nn.Module, transformer).resblocks)


def adapted_blocks(model: nn.Module, tower: str, layers: Sequence[int] | None) -> list[int]:
    """The block indices of ``tower`` to adapt: ``layers`` (None: every block), checked against the tower."""
    n = len(_blocks(model, tower))
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise LoRAError(f"{tower} tower has {n} blocks; no block {bad}")
    return chosen


class LoRAAdapters(nn.Module):
    """The A and B matrices of every adapted projection, named ``<tower>_<block>_<target>_{A,B}``."""

    def __init__(
        self,
        model: nn.Module,
        towers: Sequence[str] = TOWERS,
        targets: Sequence[str] = ("q", "k", "v"),
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.0,
        layers: dict[str, Sequence[int] | None] | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown or rank < 1:
            raise LoRAError(f"LoRA needs rank >= 1 and projections among {TARGETS}; got rank {rank}, {unknown}")
        self.rank, self.alpha, self.dropout_p = rank, float(alpha), float(dropout)
        self.scaling = self.alpha / math.sqrt(rank)  # CLIP-LoRA's α/√r
        self.targets = tuple(targets)
        self.blocks: dict[str, list[int]] = {}
        device = next(model.parameters()).device
        for tower in towers:
            self.blocks[tower] = adapted_blocks(model, tower, (layers or {}).get(tower))
            resblocks = _blocks(model, tower)
            for i in self.blocks[tower]:
                width = int(cast(nn.MultiheadAttention, resblocks[i].attn).embed_dim)
                for t in self.targets:
                    a = torch.empty(rank, width)
                    _kaiming_uniform(a, generator)
                    self.register_parameter(f"{tower}_{i}_{t}_A", nn.Parameter(a.to(device)))
                    self.register_parameter(f"{tower}_{i}_{t}_B", nn.Parameter(torch.zeros(width, rank, device=device)))
        # one dropout per projection (independent masks), as each LinearLoRA of the reference owns its own
        self.drops = nn.ModuleDict(
            {n[:-2]: nn.Dropout(self.dropout_p) for n, _ in self.named_parameters() if n[-1] == "A"}
        )

    def pair(self, tower: str, block: int, target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        a = getattr(self, f"{tower}_{block}_{target}_A", None)
        return None if a is None else (a, getattr(self, f"{tower}_{block}_{target}_B"))

    def delta(self, x: torch.Tensor, tower: str, block: int, target: str) -> torch.Tensor | None:
        """s · drop(x) Aᵀ Bᵀ for the projection, or None when it has no adapter."""
        pair = self.pair(tower, block, target)
        if pair is None:
            return None
        a, b = pair
        x = self.drops[f"{tower}_{block}_{target}"](x)
        return (x @ a.to(x.dtype).t() @ b.to(x.dtype).t()) * self.scaling


def _kaiming_uniform(t: torch.Tensor, generator: torch.Generator | None) -> None:
    """``nn.init.kaiming_uniform_(t, a=√5)`` (bound 1/√fan_in), drawn from ``generator``."""
    bound = 1.0 / math.sqrt(t.shape[1])
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=generator)


def _adapted_attention(block: nn.Module, adapters: LoRAAdapters, tower: str, index: int):
    """The block's attention with the adapters added to its projections (same arguments as open_clip's)."""
    attn = cast(nn.MultiheadAttention, block.attn)
    width, heads = attn.embed_dim, attn.num_heads
    batch_first = getattr(attn, "batch_first", True)

    def project(x: torch.Tensor, part: int, target: str) -> torch.Tensor:
        w = attn.in_proj_weight[part * width : (part + 1) * width]
        b = None if attn.in_proj_bias is None else attn.in_proj_bias[part * width : (part + 1) * width]
        y = F.linear(x, w, b)
        d = adapters.delta(x, tower, index, target)
        return y if d is None else y + d

    def attention(q_x, k_x=None, v_x=None, attn_mask=None):
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        if not batch_first:
            q_x, k_x, v_x = (t.transpose(0, 1) for t in (q_x, k_x, v_x))
        n, length, _ = q_x.shape  # (B, L, width)
        q, k, v = (
            project(x, part, t).view(n, -1, heads, width // heads).transpose(1, 2)  # (B, heads, L, head width)
            for part, (x, t) in enumerate(((q_x, "q"), (k_x, "k"), (v_x, "v")))
        )
        mask = None if attn_mask is None else attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, length, width)
        y = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
        d = adapters.delta(out, tower, index, "o")
        y = y if d is None else y + d
        return y if batch_first else y.transpose(0, 1)

    return attention


@contextlib.contextmanager
def lora_attention(model: nn.Module, adapters: LoRAAdapters) -> Iterator[None]:
    """Within the block, every adapted attention block of ``model`` (a CLIP model; the text tower is shared with
    :class:`~vlprompt.clip.backbone.PromptedTextEncoder`) runs with ``adapters``; the model is unchanged after."""
    patched = []
    try:
        for tower, indices in adapters.blocks.items():
            resblocks = _blocks(model, tower)
            for i in indices:
                block = resblocks[i]
                if "attention" in vars(block):
                    raise LoRAError(f"{tower} block {i} is already adapted (nested LoRA contexts)")
                if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                    raise LoRAError(f"{tower} block {i} has no nn.MultiheadAttention to adapt ({type(block).__name__})")
                block.attention = _adapted_attention(block, adapters, tower, i)
                patched.append(block)
        yield
    finally:
        for block in patched:
            del block.attention
