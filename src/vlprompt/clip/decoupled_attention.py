"""Decoupled attention for prompted blocks (DPL's extension point), as a context.

In a block whose input holds prompt tokens, self-attention over the tokens [instances X, prompts P] splits, per
head, into four sub-processes (Xu et al., "DPL: Decoupled Prompt Learning for Vision-Language Models", arXiv
2308.10061, read from its abstract): instance-to-instance (I2I), instance-to-prompt (I2P), prompt-to-prompt (P2P)
and prompt-to-instance (P2I). With s = q kᵀ/√d (plus the block's additive mask) and, for each query, the softmax
over each key set taken on its own:

    o_X = softmax_X(s) V_X,   ℓ_X = logsumexp_X(s)        (attention to the instances: I2I, or P2I for a prompt query)
    o_P = softmax_P(s) V_P,   ℓ_P = logsumexp_P(s)        (attention to the prompts: I2P, or P2P)
    attention = (1 − w) · o_X + w · o_P,   w = σ(ℓ_P − ℓ_X)   (the share of the joint softmax on the prompts)

which is exactly ordinary attention. :func:`decoupled_attention` lets a method replace that recombination: within
the block, every chosen block of a tower computes o_X, o_P, ℓ_X, ℓ_P and hands them, with the mask of the prompt
queries, to ``combine``; the default, :func:`exact`, gives ordinary attention back. The attention of the block is
shadowed by an instance attribute (as :mod:`vlprompt.clip.lora` does), so the shared frozen backbone is exactly as
before on exit; the two contexts cannot adapt the same block at once.

Prompt positions: ``"end"``, the last n tokens (vision prompts of :mod:`vlprompt.clip.deep_prompts`), or
``"after_first"``, positions 1..n (its text prompts). A query with no key of a set (a causal mask) gets o = 0 and
ℓ = −∞ for it, so w is 0 or 1 as the joint softmax gives. ``tests/test_decoupled_attention.py`` checks the
sub-processes by hand on a one-head, two-token toy, :func:`exact` against open_clip's own blocks with deep prompts,
and a gated recombination against a hand-written loop over open_clip's vision blocks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import deep_prompts

WHERE = ("end", "after_first")


class DecoupledAttentionError(ValueError):
    """The override does not fit the model (unknown tower or layout, a block it does not have, nested contexts)."""


class Parts(NamedTuple):
    """The sub-processes of one block's attention, each (B, heads, L, head width) or (B, heads, L, 1) for ℓ."""

    to_instances: torch.Tensor  # o_X: I2I for instance queries, P2I for prompt queries
    to_prompts: torch.Tensor  # o_P: I2P for instance queries, P2P for prompt queries
    lse_instances: torch.Tensor  # ℓ_X
    lse_prompts: torch.Tensor  # ℓ_P
    prompt_queries: torch.Tensor  # (L,) bool, True at the prompt positions


Combine = Callable[[Parts], torch.Tensor]


def prompt_mask(length: int, n: int, where: str, device=None) -> torch.Tensor:
    """(length,) bool, True at the n prompt positions of a sequence laid out as ``where``."""
    if where not in WHERE or not 0 < n < length:
        raise DecoupledAttentionError(f"prompt layout {where!r} with {n} prompts in {length} tokens; use {WHERE}")
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    if where == "end":
        mask[length - n :] = True
    else:
        mask[1 : 1 + n] = True
    return mask


def _attend(scores: torch.Tensor, keep: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention restricted to the keys ``keep`` (L,): (output, logsumexp), 0 and −∞ where no key is left."""
    s = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (B, heads, L, 1)
    weights = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0)).nan_to_num(0.0)
    return weights @ v, lse


def split_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prompts: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> Parts:
    """The four sub-processes of softmax(q kᵀ/√d + mask) v for queries, keys and values (B, heads, L, d), with
    ``prompts`` (L,) marking the prompt positions (of keys and queries alike)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, heads, L, L)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            raise DecoupledAttentionError(
                "decoupled attention takes an additive (float) attention mask, not a bool one"
            )
        scores = scores + attn_mask.to(scores.dtype)
    o_x, lse_x = _attend(scores, ~prompts, v)
    o_p, lse_p = _attend(scores, prompts, v)
    return Parts(o_x, o_p, lse_x, lse_p, prompts)


def exact(parts: Parts) -> torch.Tensor:
    """Ordinary attention from its parts: (1 − w) o_X + w o_P with w = σ(ℓ_P − ℓ_X) (0 or 1 where a set is empty)."""
    w = torch.sigmoid(parts.lse_prompts - parts.lse_instances).nan_to_num(0.5)
    return (1 - w) * parts.to_instances + w * parts.to_prompts


def _blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    if tower == "vision":
        transformer = deep_prompts._visual(model).transformer
    elif tower == "text":
        transformer = model.transformer
    else:
        raise DecoupledAttentionError(f"unknown tower {tower!r}; use 'vision' or 'text'")
    return cast(nn.ModuleList, cast(nn.Module, transformer).resblocks)


def _overridden(block: nn.Module, n: int, where: str, combine: Combine):
    """The block's attention (open_clip's arguments) with its recombination replaced by ``combine``."""
    attn = cast(nn.MultiheadAttention, block.attn)
    width, heads = attn.embed_dim, attn.num_heads
    batch_first = getattr(attn, "batch_first", True)

    def attention(q_x, k_x=None, v_x=None, attn_mask=None):
        if k_x is not None or v_x is not None:
            raise DecoupledAttentionError("decoupled attention is self-attention (no separate keys or values)")
        x = q_x if batch_first else q_x.transpose(0, 1)
        b, length, _ = x.shape  # (B, L, width)
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3 width)
        q, k, v = (t.view(b, length, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        parts = split_attention(q, k, v, prompt_mask(length, n, where, x.device), attn_mask)
        out = combine(parts).transpose(1, 2).reshape(b, length, width)
        y = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
        return y if batch_first else y.transpose(0, 1)

    return attention


@contextlib.contextmanager
def decoupled_attention(
    model: nn.Module,
    tower: str,
    n_prompts: int,
    combine: Combine = exact,
    blocks: Sequence[int] | None = None,
    where: str | None = None,
) -> Iterator[None]:
    """Within the block, the attention of ``blocks`` (None: all) of ``tower`` in ``model`` (a CLIP model) runs as
    :func:`split_attention` then ``combine``, the prompts being ``n_prompts`` tokens laid out as ``where`` (default:
    "end" for vision, "after_first" for text, as :mod:`vlprompt.clip.deep_prompts` puts them). The model is
    unchanged after."""
    where = where or ("end" if tower == "vision" else "after_first")
    if where not in WHERE or n_prompts < 1:
        raise DecoupledAttentionError(f"decoupled attention needs n_prompts >= 1 and a layout in {WHERE}")
    resblocks = _blocks(model, tower)
    chosen = list(range(len(resblocks))) if blocks is None else [int(i) for i in blocks]
    bad = [i for i in chosen if not 0 <= i < len(resblocks)]
    if bad:
        raise DecoupledAttentionError(f"{tower} tower has {len(resblocks)} blocks; no block {bad}")
    patched = []
    try:
        for i in chosen:
            block = resblocks[i]
            if "attention" in vars(block):
                raise DecoupledAttentionError(f"{tower} block {i}'s attention is already overridden (nested contexts)")
            if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                raise DecoupledAttentionError(
                    f"{tower} block {i} has no nn.MultiheadAttention ({type(block).__name__})"
                )
            block.attention = _overridden(block, n_prompts, where, combine)
            patched.append(block)
        yield
    finally:
        for block in patched:
            del block.attention
