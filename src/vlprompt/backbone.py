"""Frozen CLIP backbones through open_clip, and a text encoder with prompt slots.

Every use of open_clip's internals lives in this module (its ``encode_text`` internals changed
between releases: sequence-first to batch-first, ``text_global_pool``); the test
``test_prompted_encoder_equals_encode_text`` guards it against the pinned version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
POCKET_MODEL = "PocketCLIP-ViT-T8"
POCKET_WEIGHTS = PACKAGE_DIR / "assets" / "pocket_clip_fp16.pt"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


class BackboneError(RuntimeError):
    """A backbone cannot be loaded; the message says why and what to do."""


@lru_cache(maxsize=1)
def open_clip():
    """Import open_clip once and register the project's model configs (the tiny pocket CLIP)."""
    import open_clip as oc

    if POCKET_MODEL not in oc.list_models():
        oc.add_model_config(MODEL_CONFIG_DIR)
    return oc


def resolve_pretrained(pretrained: str | None) -> str | None:
    """Map the shipped-weights alias ``pocket`` to its file; leave tags and paths as they are."""
    if pretrained == "pocket":
        return str(POCKET_WEIGHTS)
    return pretrained


def is_local_file(pretrained: str | None) -> bool:
    return pretrained is not None and (
        os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES) or Path(pretrained).exists()
    )


@dataclasses.dataclass
class Backbone:
    """A loaded CLIP: the model in eval mode, its test transform, tokenizer and identity."""

    model: nn.Module
    preprocess: object
    tokenizer: object
    name: str
    pretrained: str | None
    weights_sha256: str

    @property
    def id(self) -> str:
        """A filesystem-safe identity: model name plus a short hash of the weights."""
        return f"{self.name}@{self.weights_sha256[:10]}"

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, tuple | list) else int(size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def provenance(self) -> dict:
        return {"backbone": self.name, "pretrained": self.pretrained, "weights_sha256": self.weights_sha256}


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of the weights as loaded (independent of file format), for provenance."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_backbone(name: str, pretrained: str | None, device: str | torch.device = "cpu",
                  force_quick_gelu: bool = False) -> Backbone:
    """Load ``name`` with ``pretrained`` (an open_clip tag, a local file, ``pocket`` or None).

    With ``HF_HUB_OFFLINE=1`` (clusters without network) a tag whose weights are not in the
    cache raises :class:`BackboneError` naming the cache and the fix.
    """
    oc = open_clip()
    if name not in oc.list_models():
        raise BackboneError(f"unknown open_clip model {name!r}; see `python -c 'import open_clip; "
                            f"print(open_clip.list_models())'` (pocket model: {POCKET_MODEL!r})")
    pretrained = resolve_pretrained(pretrained)
    if is_local_file(pretrained) and not Path(pretrained).is_file():
        raise BackboneError(f"weights file {pretrained!r} does not exist; fix backbone.pretrained "
                            f"in the config (for the pocket CLIP use 'pocket')")
    if pretrained and not is_local_file(pretrained):
        known = [tag for model, tag in oc.list_pretrained() if model == name]
        if pretrained not in known:
            raise BackboneError(f"open_clip has no pretrained tag {pretrained!r} for {name!r}; "
                                f"known tags: {known}")
    try:
        model, _, preprocess = oc.create_model_and_transforms(
            name, pretrained=pretrained, device=device, force_quick_gelu=force_quick_gelu)
    except Exception as err:  # download or cache failure: say what to do about it
        if pretrained and not is_local_file(pretrained):
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
            hint = ("HF_HUB_OFFLINE=1 is set and the weights are not in the cache "
                    if offline else "downloading them failed ")
            raise BackboneError(
                f"cannot load weights {name}/{pretrained}: {hint}({cache}). On a machine with "
                f"network run `python -m vlprompt fetch-weights --model {name} --pretrained "
                f"{pretrained}` and copy the cache, or set backbone.pretrained to a local file. "
                f"Cause: {type(err).__name__}: {err}") from err
        raise
    model.eval().requires_grad_(False)
    return Backbone(model=model, preprocess=preprocess, tokenizer=oc.get_tokenizer(name), name=name,
                    pretrained=pretrained if not is_local_file(pretrained) else Path(pretrained).name,
                    weights_sha256=state_dict_sha256(model))


def load_backbone_from_config(cfg: dict, device: str | torch.device = "cpu") -> Backbone:
    """The experiment's backbone (``cfg["backbone"]``: model, pretrained, quick_gelu)."""
    b = cfg["backbone"]
    return load_backbone(b["model"], b["pretrained"], device=device, force_quick_gelu=b.get("quick_gelu", False))


class PromptedTextEncoder(nn.Module):
    """open_clip's text tower, fed with token *embeddings* so that prompts can be learned.

    ``forward(x, eot)`` with ``x`` (n, L, d) token embeddings and ``eot`` (n,) the end-token
    positions returns (n, embed_dim) features; with the embeddings of a tokenized prompt it
    returns exactly ``model.encode_text``. With ``trim`` it runs the transformer over the first
    ``max(eot) + 1`` positions only: under the causal mask later positions cannot change the
    pooled end-token feature, so the result is the same at a fraction of the cost.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask"):
            if not hasattr(model, attr):
                raise BackboneError(f"{type(model).__name__} has no {attr!r}: only open_clip CLIP models "
                                    "with the built-in text transformer support prompt learning")
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise BackboneError(f"text pooling {model.text_pool_type!r} is not supported (need 'argmax')")
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.context_length = int(model.positional_embedding.shape[0])

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, L) token ids -> (n, L, width) embeddings."""
        return self.token_embedding(tokens)

    def forward(self, x: torch.Tensor, eot: torch.Tensor, trim: bool = True) -> torch.Tensor:
        n, length, width = x.shape
        assert width == self.width and eot.shape == (n,), (x.shape, eot.shape)
        if trim:
            length = int(eot.max()) + 1
            x = x[:, :length]
        cast = self.transformer.get_cast_dtype()
        x = x.to(cast) + self.positional_embedding[:length].to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(n, device=x.device), eot]  # (n, width) end-token feature
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def encode(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Like ``model.encode_text(tokens)`` (unnormalised), trimmed to the longest prompt."""
        return self(self.embed(tokens), tokens.argmax(dim=-1), trim=trim)


def encode_prompts(backbone: Backbone, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised features of fixed prompts, computed once (zero-shot classifiers, anchors)."""
    encoder = PromptedTextEncoder(backbone.model)
    device = next(backbone.model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tokens = backbone.tokenizer(texts[i:i + batch_size]).to(device)
            out.append(encoder.encode(tokens).float())
    return nn.functional.normalize(torch.cat(out), dim=-1)
