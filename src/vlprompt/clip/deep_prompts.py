"""Deep prompts inside open_clip's transformer towers (VPT-deep, IVLP, MaPLe, PromptSRC).

A deep prompt of depth J gives block j (j = 0 .. J-1) of a tower its own learnable tokens P_j;
blocks from J on carry the previous block's outputs at those positions along, as in the reference
(muzairkhattak/multimodal-prompt-learning, clip/model.py: ``ResidualAttentionBlock_IVLP`` and
``VisionTransformer_MaPLe``; read, not copied).

Vision tower (open_clip ``VisionTransformer``), n prompt tokens::

    input of ln_pre:   [CLS + pos, patches + pos]            -> [CLS, patches, P_0]   (P_0 is normalised by ln_pre too)
    input of block j:  [CLS, patches, out_{j-1}(prompts)]    -> [CLS, patches, P_j]   for 1 <= j < J
    output of the transformer: the n prompt positions are dropped before pooling, so class-token
    (``tok``) and mean (``avg``) pooling see exactly the tokens they see without prompts.

Text tower (fed with token embeddings by :class:`~vlprompt.clip.backbone.PromptedTextEncoder`), n
context tokens right after SOS::

    input of block 0:  [SOS, P_0, class tokens, ., EOT]   (P_0 is the prompt learner's context)
    input of block j:  positions 1 .. n replaced by P_j, for 1 <= j < J

The text prompts *replace* context positions instead of inserting tokens, so the sequence length,
the causal mask and the end-token index are those of the prompt as tokenized.

:func:`kept_patches` drops patch tokens before ``ln_pre`` (DiSa's masked view), in the same way.

No open_clip model code is copied: prompts enter through forward hooks on its modules
(``visual.ln_pre``, ``visual.transformer``, ``transformer.resblocks[j]``), registered for the
duration of a ``with`` block and removed after it, so the shared frozen backbone is never left
modified. Every use of open_clip's internals for deep prompting lives in this module; the tests in
``tests/test_deep_prompts.py`` guard it against the pinned open_clip version (depth 0 equals
``encode_image``/``encode_text``; hooked forward equals a hand-written loop over the blocks).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # open_clip ships no type information: to the type checker its names are untyped (Any)
    from open_clip import CLIP
    from open_clip.transformer import VisionTransformer

    from vlprompt.clip.backbone import PromptedTextEncoder

log = logging.getLogger(__name__)

_ACTIVE: weakref.WeakSet = weakref.WeakSet()  # towers with prompts hooked in right now (no nesting)


class DeepPromptError(RuntimeError):
    """The model cannot take deep prompts (not an open_clip ViT), or the prompts do not fit it."""


def _visual(model: CLIP) -> VisionTransformer:
    visual = getattr(model, "visual", None)
    missing = [a for a in ("conv1", "class_embedding", "ln_pre", "transformer") if not hasattr(visual, a)]
    if visual is None or missing or not hasattr(visual.transformer, "resblocks"):
        raise DeepPromptError(
            f"{type(visual).__name__} is not open_clip's VisionTransformer (lacks {missing}): "
            "deep vision prompts need a ViT image tower"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise DeepPromptError("deep vision prompts do not support attentional pooling (CoCa-style towers)")
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise DeepPromptError(f"deep vision prompts need 'tok' or 'avg' pooling, got {visual.pool_type!r}")
    return visual


def vision_width(model: CLIP) -> int:
    return int(_visual(model).conv1.out_channels)


def vision_layers(model: CLIP) -> int:
    return len(_visual(model).transformer.resblocks)


def text_width(model_or_encoder: CLIP | PromptedTextEncoder) -> int:
    return int(model_or_encoder.token_embedding.weight.shape[1])


def text_layers(model_or_encoder: CLIP | PromptedTextEncoder) -> int:
    return len(model_or_encoder.transformer.resblocks)


def cap_depth(depth: int, layers: int, tower: str) -> int:
    """``depth`` limited to the tower's number of blocks (the papers' 12 or 9 on a 4-block pocket CLIP)."""
    if depth < 0:
        raise DeepPromptError(f"{tower} prompt depth must be >= 0, got {depth}")
    if depth > layers:
        log.info("%s prompt depth %d capped at the tower's %d blocks", tower, depth, layers)
    return min(depth, layers)


def _check(prompts: Sequence[torch.Tensor], layers: int, width: int, tower: str) -> int:
    if len(prompts) > layers:
        raise DeepPromptError(f"{len(prompts)} {tower} prompt layers for a tower of {layers} blocks")
    shape = tuple(prompts[0].shape)
    for j, p in enumerate(prompts):
        if p.dim() not in (2, 3) or tuple(p.shape) != shape or p.shape[-1] != width:
            raise DeepPromptError(
                f"{tower} prompt {j} has shape {tuple(p.shape)}; every layer needs "
                f"(n_tokens, {width}) (or (batch, n_tokens, {width}), one set per row) with the same shape"
            )
    return shape[-2]


def _tokens(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if p.dim() == 3:  # per-row prompts (several runs' images in one batch: vlprompt.training.batched_images)
        if p.shape[0] != like.shape[0]:
            raise DeepPromptError(f"per-row prompts for {p.shape[0]} rows, the batch has {like.shape[0]}")
        return p.to(like.dtype)
    return p.to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1)  # (B, n, width)


@contextlib.contextmanager
def _exclusive(tower: nn.Module) -> Iterator[None]:
    if tower in _ACTIVE:
        raise DeepPromptError("prompts are already hooked into this tower (nested prompt contexts)")
    _ACTIVE.add(tower)
    try:
        yield
    finally:
        _ACTIVE.discard(tower)


@contextlib.contextmanager
def vision_prompts(model: CLIP, prompts: Sequence[torch.Tensor], through_ln_pre: bool = True) -> Iterator[None]:
    """Within the block, ``model.visual`` / ``model.encode_image`` run with deep vision prompts.

    ``prompts[j]`` (n, width) are the tokens of block j: ``prompts[0]`` is appended after the class
    token and the patches (before ``ln_pre``; after it with ``through_ln_pre`` False, as timm-style
    VPT code inserts prompts after ``norm_pre``), ``prompts[j]`` replaces the prompt positions at the
    input of block j. An empty sequence changes nothing. Prompts of shape (B, n, width) give each image of
    the batch its own tokens (row b gets ``prompts[j][b]``): several runs' images through the tower at once.
    """
    prompts = list(prompts)
    if not prompts:
        yield
        return
    visual = _visual(model)
    blocks = visual.transformer.resblocks
    n = _check(prompts, len(blocks), vision_width(model), "vision")
    batch_first = getattr(visual.transformer, "batch_first", True)

    def insert(module, args):  # args[0]: (B, 1 + grid², width), embeddings + positions
        x = args[0]
        return (torch.cat([x, _tokens(prompts[0], x)], dim=1), *args[1:])

    def insert_after(module, args, out):  # out: (B, 1 + grid², width), through ln_pre
        return torch.cat([out, _tokens(prompts[0], out)], dim=1)

    def replace(j: int):
        def hook(module, args, kwargs):
            x = args[0] if batch_first else args[0].transpose(0, 1)  # (B, L + n, width)
            x = torch.cat([x[:, :-n], _tokens(prompts[j], x)], dim=1)
            return (x if batch_first else x.transpose(0, 1), *args[1:]), kwargs

        return hook

    def drop(module, args, out):  # (B, L + n, width), batch first whatever the blocks use
        return out[:, :-n]

    with _exclusive(visual):
        first = (
            visual.ln_pre.register_forward_pre_hook(insert)
            if through_ln_pre
            else visual.ln_pre.register_forward_hook(insert_after)
        )
        handles = [first, visual.transformer.register_forward_hook(drop)]
        handles += [blocks[j].register_forward_pre_hook(replace(j), with_kwargs=True) for j in range(1, len(prompts))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def text_prompts(tower: CLIP | PromptedTextEncoder, prompts: Sequence[torch.Tensor], start: int = 1) -> Iterator[None]:
    """Within the block, the text transformer of ``tower`` (a CLIP model or a PromptedTextEncoder)
    replaces positions ``start .. start + n`` at the input of block ``j + 1`` by ``prompts[j]``.

    The context of block 0 is the input embedding itself (the prompt learner's ``ctx``), so
    ``prompts`` holds the J - 1 deeper layers. An empty sequence changes nothing.
    """
    prompts = list(prompts)
    if not prompts:
        yield
        return
    transformer = tower.transformer
    blocks = transformer.resblocks
    n = _check(prompts, len(blocks) - 1, text_width(tower), "deep text")
    batch_first = getattr(transformer, "batch_first", True)

    def replace(j: int):
        def hook(module, args, kwargs):
            x = args[0] if batch_first else args[0].transpose(0, 1)  # (n_cls, L, width)
            if x.shape[1] < start + n + 1:
                raise DeepPromptError(f"text of {x.shape[1]} tokens has no room for {n} prompts at {start}")
            x = torch.cat([x[:, :start], _tokens(prompts[j], x), x[:, start + n :]], dim=1)
            return (x if batch_first else x.transpose(0, 1), *args[1:]), kwargs

        return hook

    with _exclusive(transformer):
        handles = [blocks[j + 1].register_forward_pre_hook(replace(j), with_kwargs=True) for j in range(len(prompts))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def kept_patches(model: CLIP, keep: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``model.visual`` sees only the patch tokens ``keep`` (B, k) indexes (into the grid², each
    row in the order given), dropped before ``ln_pre``: [CLS + pos, patches + pos] -> [CLS + pos, kept patches + pos]
    (positions are added first, so a kept patch keeps its own). Tokens after the grid (deep vision prompts, in
    either order of entering the two contexts) are left in place. ``None`` changes nothing. DiSa's masked view."""
    if keep is None:
        yield
        return
    visual = _visual(model)
    grid = visual.positional_embedding.shape[0] - 1
    if keep.dim() != 2 or keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= grid):
        raise DeepPromptError(f"kept patches must be (B, k) indices into the {grid} patches, got {tuple(keep.shape)}")

    def gather(module, args):  # args[0]: (B, 1 + grid² [+ prompts], width)
        x = args[0]
        if x.shape[0] != keep.shape[0]:
            raise DeepPromptError(f"kept patches for {keep.shape[0]} images, the batch has {x.shape[0]}")
        idx = keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return (torch.cat([x[:, :1], x[:, 1 : 1 + grid].gather(1, idx), x[:, 1 + grid :]], dim=1), *args[1:])

    with _exclusive(visual.ln_pre):
        handle = visual.ln_pre.register_forward_pre_hook(gather, prepend=True)  # before a prompt insertion
        try:
            yield
        finally:
            handle.remove()


def patch_features(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """(B, grid², D) the last block's patch tokens of the plain image tower through ``ln_post`` and the projection,
    in the joint embedding space (as the class token is; MaskCLIP's reading of patch tokens)."""
    visual = _visual(model)
    grid = visual.positional_embedding.shape[0] - 1
    seen: list[torch.Tensor] = []

    def keep(module, args, out):  # (B, L, width) batch first
        seen.append(out)

    handle = visual.transformer.register_forward_hook(keep)
    try:
        model.encode_image(images)
    finally:
        handle.remove()
    tokens = visual.ln_post(seen[0][:, 1 : 1 + grid])
    return tokens @ visual.proj if visual.proj is not None else tokens


def cascade(frozen: Sequence[torch.Tensor], learnable: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Frozen prompts as a prefix of learnable ones, layer by layer: block j gets ``[frozen[j], learnable[j]]``
    ((n_f + n_l, width), the frozen tokens first and without gradient), as CasPL cascades its boosting prompts
    before a method's adapting prompts. A prefix of no layers or of zero tokens returns ``learnable`` itself,
    so a method with an empty prefix computes exactly what it computes without one."""
    frozen, learnable = list(frozen), list(learnable)
    if not frozen or frozen[0].shape[0] == 0:
        return learnable
    if not learnable:
        return [f.detach() for f in frozen]
    if len(frozen) != len(learnable):
        raise DeepPromptError(
            f"a frozen prefix of {len(frozen)} layers cannot cascade with learnable prompts of {len(learnable)} "
            "layers: give both the same depth"
        )
    return [torch.cat([f.detach().to(p.dtype), p], dim=0) for f, p in zip(frozen, learnable, strict=True)]


def prepend_context(
    embeddings: torch.Tensor, eot: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text prompt embeddings (n_cls, L, width) with the (n_f, width) frozen ``prefix`` inserted right after SOS
    (the layer-0 half of :func:`cascade` in the text tower): the sequence keeps its length L (the last n_f
    positions, padding after the end token, are dropped) and the end-token indices move by n_f."""
    n = prefix.shape[0]
    if n == 0:
        return embeddings, eot
    length = embeddings.shape[1]
    if int(eot.max()) + n >= length:
        raise DeepPromptError(f"text of {length} tokens has no room for {n} more prompt tokens after SOS")
    tokens = _tokens(prefix.detach(), embeddings)
    return torch.cat([embeddings[:, :1], tokens, embeddings[:, 1 : length - n]], dim=1), eot + n


def encode_image(model: CLIP, images: torch.Tensor, prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """``model.encode_image(images)`` (unnormalised) with deep vision prompts."""
    with vision_prompts(model, prompts):
        return model.encode_image(images)


def encode_text(
    encoder: PromptedTextEncoder, embeddings: torch.Tensor, eot: torch.Tensor, deep: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Text features (unnormalised) of prompt ``embeddings`` (n, L, width) through a
    :class:`~vlprompt.clip.backbone.PromptedTextEncoder`, with deep prompts at positions 1..n of blocks 1..J-1."""
    if len(deep) and int(eot.min()) <= deep[0].shape[0]:
        raise DeepPromptError("the end token must come after the context positions that deep prompts replace")
    with text_prompts(encoder, deep):
        return encoder(embeddings, eot)
