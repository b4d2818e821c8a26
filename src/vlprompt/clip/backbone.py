"""Frozen CLIP backbones through open_clip, and a text encoder with prompt slots.

Every use of open_clip's internals lives in this module (its ``encode_text`` internals changed
between releases: sequence-first to batch-first, ``text_global_pool``); the test
``test_prompted_encoder_equals_encode_text`` guards it against the pinned version.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:  # open_clip ships no type information: to the type checker these names are untyped (Any)
    from open_clip import CLIP, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
    from open_clip.transformer import Transformer
    from PIL import Image

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/vlprompt: model_configs/ and assets/
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
POCKET_MODEL = "PocketCLIP-ViT-T8"
POCKET_WEIGHTS = PACKAGE_DIR / "assets" / "pocket_clip_fp16.pt"  # the pocket_v1 CLIP (its first file name)
#: Shipped pocket CLIPs by name (``backbone.pretrained``), one per pocket world; ``pocket`` is ``pocket_v1``.
POCKET_ASSETS = {"pocket_v1": POCKET_WEIGHTS, "pocket_v2": PACKAGE_DIR / "assets" / "pocket_clip_v2_fp16.pt"}
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
    """Map the shipped pocket CLIPs' names (``pocket_v1``, ``pocket_v2``; ``pocket`` = ``pocket_v1``) to
    their files; leave tags and paths as they are."""
    if pretrained == "pocket":
        pretrained = "pocket_v1"
    if pretrained in POCKET_ASSETS:
        return str(POCKET_ASSETS[pretrained])
    return pretrained


def is_local_file(pretrained: str | None) -> TypeGuard[str]:
    return pretrained is not None and (
        os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES) or Path(pretrained).exists()
    )


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network (the values huggingface_hub accepts)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir(cache_dir: str | None = None) -> str:
    """Where huggingface_hub keeps downloaded weights (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if cache_dir:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def cached_weights(name: str, tag: str, cache_dir: str | None = None) -> str | None:
    """The local file holding the weights of ``name``/``tag`` if a download left it in a cache, else None.

    Looks where open_clip's ``download_pretrained`` would put them: the Hugging Face hub cache
    (safetensors first, as open_clip prefers) or, for URL-only tags, ``~/.cache/clip``. Reads
    the disk only, so it never touches the network.
    """
    cfg = open_clip().get_pretrained_cfg(name, tag)
    if not cfg:
        return None
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hf = cfg.get("hf_hub", "")
    if hf:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hf = ""
    if hf:
        repo, filename = os.path.split(hf)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(
                0,
                "open_clip_model.safetensors"
                if filename == "open_clip_pytorch_model.bin"
                else filename[:-4] + ".safetensors",
            )
        for f in candidates:
            found = try_to_load_from_cache(repo, f, cache_dir=hub_cache_dir(cache_dir))
            if isinstance(found, str):
                return found
        return None
    url = cfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return str(path) if path.is_file() else None
    return None


@dataclasses.dataclass
class Backbone:
    """A loaded CLIP: the model in eval mode, its test transform, tokenizer and identity."""

    model: CLIP | CustomTextCLIP
    preprocess: Callable[[Image.Image], torch.Tensor]  # torchvision's Compose
    tokenizer: SimpleTokenizer | HFTokenizer
    name: str
    pretrained: str | None
    weights_sha256: str
    quick_gelu: bool = False
    source: str = "tag"  # tag | file | random
    # Features of frozen prompts, keyed by the prompts: computed once per process (encode_prompts).
    prompt_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def id(self) -> str:
        """A filesystem-safe identity: model name plus a short hash of the weights."""
        gelu = "-quickgelu" if self.quick_gelu and not self.name.endswith("quickgelu") else ""
        return f"{self.name}{gelu}@{self.weights_sha256[:10]}"

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, tuple | list) else int(size)

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def provenance(self) -> dict:
        return {
            "backbone": self.name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "quick_gelu": self.quick_gelu,
            "weights_source": self.source,
        }


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of the weights as loaded (independent of file format and device), for provenance."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_request(oc, name: str, pretrained: str | None, cache_dir: str | None) -> str:
    """Validate (name, pretrained) before anything is built; return the weights' source kind."""
    if name not in oc.list_models():
        close = difflib.get_close_matches(name, oc.list_models(), n=5, cutoff=0.6)
        raise BackboneError(
            f"unknown open_clip model {name!r}"
            + (f"; did you mean {close}?" if close else "")
            + f" (all models: `python -c 'import open_clip; print(open_clip.list_models())'`;"
            f" the pocket CLIP is {POCKET_MODEL!r})"
        )
    if not pretrained:
        return "random"
    if is_local_file(pretrained):
        if not Path(pretrained).is_file():
            asset = next((n for n, f in POCKET_ASSETS.items() if str(f) == str(pretrained)), None)
            if asset:
                world = asset.removeprefix("pocket_")
                raise BackboneError(
                    f"the {asset} CLIP is not shipped with this version ({pretrained} is missing). Fix: create "
                    f"it with `snakemake pretrain_pocket_clip --cores 1 --configfile <a config with pocket.world: "
                    f"{world}>` and set backbone.pretrained to the file it writes "
                    f"(results/pocket_clip/pocket_clip_{world}_fp16.pt)"
                )
            raise BackboneError(
                f"weights file {pretrained!r} does not exist; fix backbone.pretrained "
                f"in the config (for the shipped pocket CLIPs use 'pocket_v1' or 'pocket_v2')"
            )
        return "file"
    if not oc.get_pretrained_cfg(name, pretrained):
        known = oc.list_pretrained_tags_by_model(name)
        raise BackboneError(
            f"open_clip has no pretrained tag {pretrained!r} for {name!r}; known tags: "
            f"{known or 'none (use a local weights file or pretrained: null)'}"
        )
    if hub_offline() and cached_weights(name, pretrained, cache_dir) is None:
        raise BackboneError(
            f"cannot load weights {name}/{pretrained}: HF_HUB_OFFLINE=1 is set and they are not in the "
            f"Hugging Face cache {hub_cache_dir(cache_dir)} (set by HF_HOME / HF_HUB_CACHE) nor in "
            f"~/.cache/clip. Fix: on a machine with network run `python -m vlprompt fetch-weights --model "
            f"{name} --pretrained {pretrained}` and copy its cache directory here (or point HF_HOME at "
            f"it), or set backbone.pretrained to a local weights file."
        )
    return "tag"


def _open_clip_dir() -> Path | None:
    """open_clip's package folder, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=8)
def _model_config_file(model: str) -> dict | None:
    """The open_clip model config of ``model`` read from its file (ours, then open_clip's), or None."""
    import json

    package = _open_clip_dir()
    for folder in [MODEL_CONFIG_DIR, *([package / "model_configs"] if package else [])]:
        file = folder / f"{model}.json"
        if file.is_file():
            return json.loads(file.read_text())
    return None


def text_context_length(model: str) -> int:
    """The text encoder's context in tokens of the open_clip model ``model``, read from its config file (the plan
    asks before any weights are loaded, and without importing open_clip when the file is found)."""
    config = _model_config_file(model)
    if config is None:
        config = open_clip().get_model_config(model) or {}
    return int(config.get("text_cfg", {}).get("context_length", 77))


@lru_cache(maxsize=8)
def text_tokenizer(model: str):
    """The tokenizer of the open_clip model ``model``, no weights loaded. CLIP's BPE tokenizer (what
    ``open_clip.get_tokenizer`` builds for a model whose config names no other) is built from open_clip's
    ``tokenizer`` module alone: importing the whole of open_clip costs the plan seconds."""
    if "open_clip" not in sys.modules:
        light = bpe_tokenizer(model)
        if light is not None:
            return light
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # open_clip logs each step of finding a tokenizer: not the plan's news
    try:
        return open_clip().get_tokenizer(model)
    finally:
        logging.disable(previous)


def bpe_tokenizer(model: str):
    """open_clip's ``SimpleTokenizer`` for ``model`` from its ``tokenizer`` module alone, or None when the model's
    config names another tokenizer (Hugging Face's, SigLIP's) or open_clip is not found."""
    import importlib.util

    config, package = _model_config_file(model), _open_clip_dir()
    text = (config or {}).get("text_cfg", {})
    if config is None or package is None or "siglip" in model.lower():
        return None
    if text.get("hf_tokenizer_name") or text.get("tokenizer_kwargs"):
        return None
    spec = importlib.util.spec_from_file_location("_vlprompt_clip_bpe", package / "tokenizer.py")
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(context_length=int(text.get("context_length", 77)))


def load_backbone(
    name: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    force_quick_gelu: bool = False,
    cache_dir: str | None = None,
) -> Backbone:
    """Load ``name`` with ``pretrained`` (an open_clip tag, a local file, ``pocket`` or None = random).

    Every (model, tag) pair of ``open_clip.list_pretrained()`` works. With ``HF_HUB_OFFLINE=1``
    (clusters without network) a tag whose weights are not in the cache raises
    :class:`BackboneError` naming the cache and the fix, before any model is built.
    OpenAI weights were trained with QuickGELU: use the ``-quickgelu`` model or ``force_quick_gelu``.
    """
    oc = open_clip()
    pretrained = resolve_pretrained(pretrained)
    source = _check_request(oc, name, pretrained, cache_dir)
    if (
        source == "tag"
        and oc.get_pretrained_cfg(name, pretrained).get("quick_gelu")
        and not (force_quick_gelu or name.endswith("quickgelu"))
    ):
        log.warning(
            "%s/%s was trained with QuickGELU but is loaded with GELU: features differ slightly "
            "(set backbone.quick_gelu: true, as the CoOp-family papers do)",
            name,
            pretrained,
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")  # logged above, once
            model, _, preprocess = oc.create_model_and_transforms(
                name, pretrained=pretrained, device=device, force_quick_gelu=force_quick_gelu, cache_dir=cache_dir
            )
    except Exception as err:  # download, cache or checkpoint failure: say what to do about it
        if source == "file":
            raise BackboneError(
                f"cannot load weights file {pretrained!r} into {name!r}: it is not a "
                f"checkpoint of this architecture ({type(err).__name__}: {err})"
            ) from err
        if source == "tag":
            raise BackboneError(
                f"cannot load weights {name}/{pretrained}: downloading them failed (cache: "
                f"{hub_cache_dir(cache_dir)}). Fix: on a machine with network run `python -m vlprompt "
                f"fetch-weights --model {name} --pretrained {pretrained}` and copy the cache, set "
                f"HF_HUB_OFFLINE=1 to use only cached weights, or set backbone.pretrained to a local file. "
                f"Cause: {type(err).__name__}: {err}"
            ) from err
        raise
    model.eval().requires_grad_(False)
    return Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=oc.get_tokenizer(name),
        name=name,
        pretrained=Path(pretrained).name if source == "file" and pretrained else pretrained,
        weights_sha256=state_dict_sha256(model),
        quick_gelu=bool(force_quick_gelu or name.endswith("quickgelu")),
        source=source,
    )


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
    pooled end-token feature, so the result is the same at a fraction of the cost (77 positions
    against about 12 for a CoOp prompt; see ``benchmarks/text_encoder.py``).
    """

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # (context_length, width)
    transformer: Transformer
    ln_final: nn.LayerNorm
    text_projection: torch.Tensor | nn.Linear | None  # (width, embed_dim) in the OpenAI layout
    attn_mask: torch.Tensor  # (context_length, context_length) causal mask

    def __init__(self, model: CLIP):
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask"):
            if getattr(model, attr, None) is None:
                raise BackboneError(
                    f"{type(model).__name__} has no {attr!r}: only open_clip CLIP models "
                    "with the built-in causal text transformer support prompt learning"
                )
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise BackboneError(
                f"text pooling {model.text_pool_type!r} is not supported (need 'argmax', "
                "the end token of the OpenAI/OpenCLIP layout)"
            )
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

    # Set by a trainer that runs several runs' prompts through the tower in one pass
    # (vlprompt.training.batched): called instead of the tower as ``intercept(x, eot, trim)``.
    intercept: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, eot: torch.Tensor, trim: bool = True) -> torch.Tensor:
        if self.intercept is not None:
            return self.intercept(x, eot, trim)
        return self.tower(x, eot, trim)

    def tower(self, x: torch.Tensor, eot: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """The text tower over prompt embeddings ``x`` (n, L, width) with end tokens at ``eot`` (n,)."""
        n, length, width = x.shape
        assert width == self.width and eot.shape == (n,), (x.shape, eot.shape)
        assert length <= self.context_length, (length, self.context_length)
        if trim:
            length = int(eot.max()) + 1
            x = x[:, :length]  # (n, max_eot + 1, width): later positions cannot reach the end token
        cast = self.transformer.get_cast_dtype()
        x = x.to(cast) + self.positional_embedding[:length].to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])  # batch first (open_clip >= 2.24)
        x = self.ln_final(x)
        x = x[torch.arange(n, device=x.device), eot]  # (n, width) end-token feature
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (n, embed_dim)

    def encode(self, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Like ``model.encode_text(tokens)`` (unnormalised), trimmed to the longest prompt."""
        return self(self.embed(tokens), tokens.argmax(dim=-1), trim=trim)


def encode_prompts(backbone: Backbone, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised features of fixed prompts (zero-shot classifiers, KgCoOp/ProGrad anchors).

    Computed once per backbone and list of prompts: later calls with the same prompts (another
    seed, evaluating the same classes again) return a copy of the cached features. Prompts are
    encoded in order of length, so each batch is trimmed to its own longest prompt.
    """
    device = next(backbone.model.parameters()).device
    key = (tuple(texts), str(device))
    cached = backbone.prompt_cache.get(key)
    if cached is not None:
        return cached.clone()
    encoder = PromptedTextEncoder(backbone.model)
    tokens = backbone.tokenizer(list(texts))  # (n, L)
    order = torch.argsort(tokens.argmax(dim=-1), stable=True)
    out = torch.empty(len(texts), backbone.embed_dim)
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = encoder.encode(tokens[idx].to(device)).float().cpu()
    features = nn.functional.normalize(out, dim=-1).to(device)
    backbone.prompt_cache[key] = features
    return features.clone()
