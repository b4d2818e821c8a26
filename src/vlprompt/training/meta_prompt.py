"""The meta stage of a ``reads_meta_prompt`` method (GRAM): its pool of unlabelled image-text pairs, the method's own
meta procedure on it, and the keyed artefact every run of the method reads (vlprompt.experiment.meta_prompt).

The pool is the backbone's pretraining data: on the pocket world, images and captions drawn by the pocket CLIP's
own pretraining recipe (:data:`vlprompt.training.pretrain.PRESETS` of the config's world, ``meta_pool_size``
pairs from the ``meta_seed`` stream). The pairs' class labels exist in the renderer but are never handed to the
method: it sees image features and caption strings only. Real backbones have no pretraining pool in the
workbench: the stage refuses them with one line.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from vlprompt.clip.backbone import POCKET_MODEL
from vlprompt.clip.prompting import encode_prompts
from vlprompt.data import pocket
from vlprompt.experiment.config import ConfigError, backbone_key, method_settings
from vlprompt.experiment.meta_prompt import meta_stages, pool_world
from vlprompt.io import atomic_torch_save, atomic_write_json, file_record, provenance
from vlprompt.methods import MethodContext
from vlprompt.methods.gram import cluster_pairs
from vlprompt.training.context import method_context, start_job
from vlprompt.training.pretrain import PRESETS, _render_pool, caption, name_texture, pretraining_classes
from vlprompt.training.records import asdict


def pretraining_pool(world_name: str, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``size`` images (N, H, W, 3) uint8 and their captions, drawn by the pretraining recipe of pocket world
    ``world_name`` (its styles, strengths, caption templates; the pool's seed ``seed``)."""
    if world_name not in PRESETS:
        raise ConfigError(f"no pretraining pool for pocket world {world_name!r}; use one of {sorted(PRESETS)}")
    recipe, world = PRESETS[world_name]
    recipe = dataclasses.replace(recipe, pool_size=size, seed=seed)
    images, labels, styles, textures = _render_pool(world, recipe)
    names = [f"{c} {s}" for c, s in pretraining_classes(world)]
    rng = np.random.default_rng(seed + 1)
    captions = []
    for i in range(size):
        text = caption(names[labels[i]], str(styles[i]), rng)
        if recipe.texture_caption_p > 0 and textures[i] > 0 and rng.random() < recipe.texture_caption_p:
            text = name_texture(text, pocket.TEXTURES[textures[i]])
        captions.append(text.rstrip("."))  # the prompt adds the final "."
    return images, captions


def fitting_captions(ctx: MethodContext, captions: list[str], context: str) -> list[int]:
    """Indices of the captions whose prompt (``context`` words, the caption, ".") fits the text encoder: the pocket
    CLIP reads 20 tokens, and the longest v2 captions (a style and a texture named) leave no room for the context."""
    tokens = ctx.backbone.tokenizer([f"{context} {c}." for c in captions])
    eot = tokens.argmax(-1)
    return [i for i in range(len(captions)) if int(eot[i]) < tokens.shape[1] - 1]


@torch.no_grad()
def image_features(ctx: MethodContext, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, D) frozen image features of uint8 images (N, H, W, 3) at the backbone's resolution."""
    model = ctx.backbone.model
    size = ctx.backbone.image_size
    if images.shape[1] != size:
        raise ConfigError(f"the pool's {images.shape[1]}-px images do not fit the backbone's {size}-px input")
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255
        out.append(model.encode_image(((x - mean) / std).to(ctx.device)).float().cpu())
    return torch.cat(out)


def train_meta_prompt(cfg: dict, mkey: str, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the meta stage ``mkey`` (one of :func:`~vlprompt.experiment.meta_prompt.meta_stages`) and write
    ``out_dir/model.pt`` with ``metrics.json``."""
    t0 = time.time()
    stages = meta_stages(cfg)
    if mkey not in stages:
        raise ConfigError(f"no meta stage {mkey!r} in this config; its stages: {sorted(stages) or 'none'}")
    method, dataset, shots = stages[mkey]
    if not str(cfg["backbone"]["model"]).startswith(POCKET_MODEL.split("-")[0]):
        raise ConfigError(
            f"{method}'s meta stage reads the backbone's image-text pretraining data, which the workbench has only "
            "for the pocket CLIP; use a pocket backbone or init: coop with regulator: identity"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, cls = start_job(cfg, method, 0)
    mcfg = cls.make_config(method_settings(cfg, method, dataset, shots))
    world = pool_world(cfg)
    images, captions = pretraining_pool(world, mcfg.meta_pool_size, mcfg.meta_seed)
    ctx = method_context(cfg, dataset, [], device, mcfg.meta_seed)
    keep = fitting_captions(ctx, captions, mcfg.ctx_init or " ".join(["X"] * mcfg.n_ctx))
    images, captions = images[keep], [captions[i] for i in keep]
    feats = image_features(ctx, images)
    texts = encode_prompts(ctx.backbone, [f"{c}." for c in captions]).float().cpu()
    clusters = cluster_pairs(feats, texts, mcfg.meta_clusters)
    result = cls.meta_train(ctx, mcfg, feats, captions, clusters)
    prov = provenance(**ctx.backbone.provenance(), device=str(device))
    atomic_torch_save(out_dir / "model.pt", {"method": method, "state": result["state"], "provenance": prov})
    metrics = {
        "method": method,
        "stage": "meta",
        "key": mkey,
        "backbone_key": backbone_key(cfg),
        "pool": {
            "world": world,
            "pairs": len(captions),
            "captions": len(set(captions)),
            "dropped_too_long": mcfg.meta_pool_size - len(captions),
            "labels_read": False,
        },
        "clusters": np.bincount(clusters).tolist(),
        "meta_settings": cls.meta_settings(mcfg),
        "hyperparameters": asdict(mcfg),
        "train": {"query_loss_history": result["history"]},
        "seconds": round(time.time() - t0, 2),
        "provenance": prov,
        "artefacts": {"model.pt": file_record(out_dir / "model.pt")},
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
