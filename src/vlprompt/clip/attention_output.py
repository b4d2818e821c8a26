"""A term on the attention output of chosen blocks of either CLIP tower, as a context (APT's approximated prompts).

Pre-norm open_clip block ``j`` computes ``x + ls_1(attn(ln_1(x)))``. Within :func:`attention_outputs`, block j's
attention output a = attn(h), h = ln_1(x) (after the output projection, before the layer scale and the residual),
becomes ``modifiers[j](a, h)``::

    x ← x + ls_1(f_j(attn(h), h)) + ...,   h = ln_1(x)

This is where APT (Wu et al., arXiv 2306.15706; DoubtedSteam/APT, ``ViLT/vilt/modules/vision_transformer_apt.py``
``Attention.forward``: ``x = self.APT(self.proj(x), res)`` with ``res`` the attention's normalised input) adds its
approximated prompt contribution. The hook is a forward hook on each chosen block's ``attn`` module
(``nn.MultiheadAttention``), registered for the duration of the ``with`` block and removed after it, so the shared
frozen backbone is unchanged on exit. A modifier is applied to each token on its own, so the blocks' layout
(batch first or not) does not matter. ``tests/test_apt.py`` checks it against a hand-written loop over the blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch
from torch import nn

from vlprompt.clip import deep_prompts

# (attention output a, attention input h) -> the output that replaces a; both (..., width), token by token
Modifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TOWERS = ("vision", "text")


def blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    """The residual attention blocks of ``tower`` ("vision" or "text") of an open_clip CLIP."""
    if tower == "vision":
        transformer = deep_prompts._visual(model).transformer
    elif tower == "text":
        transformer = model.transformer
    else:
        raise deep_prompts.DeepPromptError(f"unknown tower {tower!r}; use one of {TOWERS}")
    return cast(nn.ModuleList, cast(nn.Module, transformer).resblocks)


@contextlib.contextmanager
def attention_outputs(model: nn.Module, modifiers: Sequence[Modifier | None], tower: str = "vision") -> Iterator[None]:
    """Within the block, the attention output of block j of ``tower`` is ``modifiers[j](output, input)`` (None: left
    as it is). Fewer modifiers than blocks leave the later blocks alone; an empty sequence changes nothing."""
    modifiers = list(modifiers)
    chosen = blocks(model, tower)
    if len(modifiers) > len(chosen):
        raise deep_prompts.DeepPromptError(f"{len(modifiers)} attention-output terms for {len(chosen)} blocks")

    def hook(f: Modifier):
        def apply(module, args, kwargs, out):  # out: (attention output, weights or None)
            query = args[0] if args else kwargs["query"]
            return (f(out[0], query), *out[1:])

        return apply

    attns = [(cast(nn.Module, chosen[j].attn), f) for j, f in enumerate(modifiers) if f is not None]
    with contextlib.ExitStack() as stack:
        for attn, _ in attns:
            stack.enter_context(deep_prompts._exclusive(attn))
        handles = [attn.register_forward_hook(hook(f), with_kwargs=True) for attn, f in attns]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
