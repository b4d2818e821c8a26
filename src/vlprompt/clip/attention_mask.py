"""Prompt tokens as extra keys and values of a block's attention, under a per-token mask (TCPA), as a context.

Token Coordinated Prompt Attention (Liu et al., ICML 2025; zhoujiahuan1991/ICML2025-TCPA, ``models/VFPT_TCPA.py``
``forward``/``forward_block``/``forward_attn``, read, not copied) gives every block j fresh prompt tokens P_j that
only *serve* as keys and values: their own rows are dropped from the attention and from the residual stream, and a
mask says which prompts each token may attend to. For a pre-norm open_clip block with input x (B, L, d)::

    h = ln_1(x),  g = ln_1(P_j)                      (P_j: (B, m, d), from ``plans[j](x)``, with the mask M)
    q = h W_q,  k = [h; g] W_k,  v = [h; g] W_v        (keys and values: the L tokens, then the m prompts)
    S = softmax(q kᵀ / √d_head)                         (B, heads, L, L + m; a text tower's causal mask added first)
    S ← S ⊙ M           (``after_softmax``, the reference's: the masked weights are not renormalised)
      or S = softmax(q kᵀ / √d_head + log M)   (otherwise: a masked softmax over the allowed keys)
    x ← x + ls_1(out_proj(S v)),  then the block's MLP as usual

``plans[j]`` receives the block's input x (batch first, before ``ln_1``), so it can choose the prompts of each token
from x (TCPA's key matching); it returns the (B, m, d) prompt tokens and the (B, L, L + m) mask (None: every token
attends to everything). The prompts are not inserted into the sequence, so every other hook, the pooling and the
sequence length stay as they are. Within :func:`prompt_attention` an instance attribute ``attention`` shadows the
block's method (as :mod:`vlprompt.clip.lora` does) and a forward pre-hook hands it x; both are removed on exit, so
the shared frozen backbone is unchanged. ``tests/test_tcpa.py`` checks it against a hand-written loop over the blocks
in the reference's own layout ([CLS, prompts, patches] through the block, the prompts' rows dropped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import attention_output, deep_prompts

# block input x (B, L, d), batch first -> (prompt tokens (B, m, d), mask (B, L, L + m) or None)
Plan = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def attend(
    attn: nn.MultiheadAttention,
    h: torch.Tensor,
    kv: torch.Tensor,
    mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None = None,
    after_softmax: bool = True,
) -> torch.Tensor:
    """(B, L, d): ``attn``'s attention of the queries ``h`` (B, L, d) over the keys and values ``kv`` (B, L', d), the
    weights multiplied by ``mask`` (B, L, L') after the softmax, or the softmax restricted to its non-zero entries."""
    width, heads = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    n, length, _ = h.shape

    def project(x: torch.Tensor, part: int) -> torch.Tensor:
        y = F.linear(
            x, w[part * width : (part + 1) * width], None if b is None else b[part * width : (part + 1) * width]
        )
        return y.view(n, x.shape[1], heads, width // heads).transpose(1, 2)  # (B, heads, ·, head width)

    q, k, v = project(h, 0), project(kv, 1), project(kv, 2)
    scores = q @ k.transpose(-2, -1) * (width // heads) ** -0.5  # (B, heads, L, L')
    if attn_mask is not None:  # a text tower's causal mask over the L tokens (the prompts are never masked by it)
        scores = scores + F.pad(attn_mask.to(scores.dtype), (0, kv.shape[1] - length))
    if mask is not None and not after_softmax:
        scores = scores.masked_fill(mask.unsqueeze(1) == 0, float("-inf"))
    weights = scores.softmax(dim=-1)
    if mask is not None and after_softmax:
        weights = weights * mask.unsqueeze(1).to(weights.dtype)
    out = (weights @ v).transpose(1, 2).reshape(n, length, width)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


@contextlib.contextmanager
def prompt_attention(
    model: nn.Module, plans: Sequence[Plan | None], tower: str = "vision", after_softmax: bool = True
) -> Iterator[None]:
    """Within the block, block j of ``tower`` attends also to the prompt tokens ``plans[j](x)`` gives, under its mask
    (see the module docstring); None, or fewer plans than blocks, leaves a block as it is."""
    plans = list(plans)
    chosen = attention_output.blocks(model, tower)
    if len(plans) > len(chosen):
        raise deep_prompts.DeepPromptError(f"{len(plans)} prompt-attention plans for {len(chosen)} blocks")
    patched: list[nn.Module] = []
    handles = []

    def install(block: Any, plan: Plan) -> None:  # open_clip's ResidualAttentionBlock
        attn = cast(nn.MultiheadAttention, block.attn)
        ln_1 = cast(nn.Module, block.ln_1)
        batch_first = getattr(attn, "batch_first", True)
        seen: list[torch.Tensor] = []

        def keep(module, args, kwargs):  # the block's input x, before ln_1
            x = args[0] if args else kwargs["q_x"]
            seen[:] = [x if batch_first else x.transpose(0, 1)]

        def attention(q_x, k_x=None, v_x=None, attn_mask=None):
            if k_x is not None or v_x is not None:
                raise deep_prompts.DeepPromptError("prompt attention supports self-attention blocks only")
            h = q_x if batch_first else q_x.transpose(0, 1)  # (B, L, d)
            tokens, mask = plan(seen.pop())
            shape = (h.shape[0], h.shape[1], h.shape[1] + tokens.shape[1])
            if mask is not None and tuple(mask.shape) != shape:
                raise deep_prompts.DeepPromptError(
                    f"a prompt-attention mask must be (B, L, L + m) = {shape}, got {tuple(mask.shape)}"
                )
            kv = torch.cat([h, ln_1(tokens.to(h.dtype))], dim=1)
            out = attend(attn, h, kv, mask, attn_mask, after_softmax)
            return out if batch_first else out.transpose(0, 1)

        if "attention" in vars(block):
            raise deep_prompts.DeepPromptError("this block's attention is already replaced (nested attention contexts)")
        block.attention = attention  # an instance attribute shadows the method
        patched.append(block)
        handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))

    try:
        for j, plan in enumerate(plans):
            if plan is not None:
                install(chosen[j], plan)
        yield
    finally:
        for h in handles:
            h.remove()
        for block in patched:
            del block.attention
