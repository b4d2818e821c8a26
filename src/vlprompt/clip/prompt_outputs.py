"""The outputs of deep vision prompts, kept instead of dropped (Prompt-CAM's class prompts).

:func:`~vlprompt.clip.deep_prompts.vision_prompts` drops the n prompt positions from the vision transformer's output
so that pooling sees the tokens it sees without prompts. Prompt-CAM (Chowdhury et al., CVPR 2025; Imageomics/
Prompt_CAM, ``model/vision_transformer.py`` ``forward_features``/``forward_head``) classifies from those outputs
instead: with one prompt per class, the last block's output o_c at the prompt of class c, through the tower's final
norm, gives the class's logit. :func:`kept_prompt_outputs` is the extension point: within the block, every forward
of the image tower records the last block's outputs at the last ``n`` positions (the prompts), before the prompt
context drops them; the shared frozen backbone is unchanged on exit (one forward hook, removed after the block).

:func:`prompt_attention_maps` gives Prompt-CAM's explanation: the last block's attention of each prompt over the
patches. ``tests/test_prompt_cam.py`` checks both against a hand-written loop over open_clip's blocks in the
reference's own order (prompts prepended fresh at every block, their outputs dropped after it, the last block's
kept), and against the reference's own model on the tiny CLIP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vlprompt.clip import deep_prompts

if TYPE_CHECKING:
    from open_clip import CLIP


@contextlib.contextmanager
def kept_prompt_outputs(model: CLIP, n: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward of ``model.visual`` appends to the yielded list the (B, n, width) outputs of its
    last block at the last ``n`` positions (the deep vision prompts'), batch first, before
    :func:`~vlprompt.clip.deep_prompts.vision_prompts` drops them (the hook runs first, whichever context was
    entered first)."""
    if n <= 0:
        raise deep_prompts.DeepPromptError(f"prompt outputs need at least one prompt token, got {n}")
    visual = deep_prompts._visual(model)
    seen: list[torch.Tensor] = []

    def keep(module, args, out):  # out: (B, L + n, width), batch first whatever the blocks use
        if out.shape[1] <= n:
            raise deep_prompts.DeepPromptError(f"the image tower's output has {out.shape[1]} tokens, not {n} prompts")
        seen.append(out[:, -n:])

    with deep_prompts._exclusive(visual.transformer):
        handle = visual.transformer.register_forward_hook(keep, prepend=True)
        try:
            yield seen
        finally:
            handle.remove()


def encode_prompt_outputs(
    model: CLIP, images: torch.Tensor, prompts: Sequence[torch.Tensor], through_ln_pre: bool = True
) -> torch.Tensor:
    """(B, n, width): the image tower's last-block outputs at the n deep prompt positions (``prompts`` and
    ``through_ln_pre`` as :func:`~vlprompt.clip.deep_prompts.vision_prompts` takes them), through the tower's final
    norm ``ln_post`` (no projection: Prompt-CAM's head reads the transformer width)."""
    prompts = list(prompts)
    if not prompts:
        raise deep_prompts.DeepPromptError("prompt outputs need deep vision prompts (depth >= 1)")
    visual = deep_prompts._visual(model)
    with (
        deep_prompts.vision_prompts(model, prompts, through_ln_pre),
        kept_prompt_outputs(model, prompts[0].shape[0]) as seen,
    ):
        model.encode_image(images)
    return visual.ln_post(seen[-1])


def prompt_attention_maps(
    model: CLIP, images: torch.Tensor, prompts: Sequence[torch.Tensor], through_ln_pre: bool = True
) -> torch.Tensor:
    """(B, n, heads, G): at the image tower's last block, the attention weights of each of the n deep prompts over the
    G patch tokens (softmax over every key: class token, patches and prompts), per head. Prompt-CAM's explanation of
    class c is row c (the reference's ``attn_map[:, :, c, vpt_num + 1:]`` in ``experiment/visualize_run.py``)."""
    prompts = list(prompts)
    if not prompts:
        raise deep_prompts.DeepPromptError("prompt attention maps need deep vision prompts (depth >= 1)")
    visual = deep_prompts._visual(model)
    last = visual.transformer.resblocks[-1]
    batch_first = getattr(visual.transformer, "batch_first", True)
    seen: list[torch.Tensor] = []

    def keep(module, args, kwargs):  # the last block's input, after any prompt replacement
        x = args[0] if args else kwargs["q_x"]
        seen.append(x if batch_first else x.transpose(0, 1))

    with deep_prompts.vision_prompts(model, prompts, through_ln_pre):
        handle = last.register_forward_pre_hook(keep, with_kwargs=True)  # after the prompt context's own hook
        try:
            model.encode_image(images)
        finally:
            handle.remove()
    h = last.ln_1(seen[-1])  # (B, L + n, width)
    attn = last.attn
    width, heads = attn.embed_dim, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k = (
        F.linear(h, w[i * width : (i + 1) * width], None if b is None else b[i * width : (i + 1) * width])
        .view(h.shape[0], h.shape[1], heads, width // heads)
        .transpose(1, 2)
        for i in (0, 1)
    )
    weights = (q @ k.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)  # (B, heads, L + n, L + n)
    n, grid = prompts[0].shape[0], visual.positional_embedding.shape[0] - 1
    return weights[:, :, -n:, 1 : 1 + grid].transpose(1, 2)
