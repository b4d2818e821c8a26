"""Trait localisation: does a class prompt's attention map find the object, or something else?

Prompt-CAM (Chowdhury et al., CVPR 2025; Imageomics/Prompt_CAM at commit 7722fc2) explains a prediction by the
true class prompt's last-block attention over the patches, one map per head (``experiment/visualize_run.py``:
``attn_map[:, :, target, vpt_num + 1:]``, drawn over the image for every head; the reference's code draws the maps
and ranks heads by blurring them, it computes no localisation score). A method that gives such maps
(``trait_maps(images)`` → (B, C, heads, G), C its classes, G the patches) is scored here on the pocket world,
whose renderer knows where each object is (:func:`vlprompt.data.pocket.object_mask`). With A_h (G,) the map of head
h of the image's own class prompt, w_p ∈ [0, 1] the share of patch p covered by the object (the silhouette averaged
over the patch), and m the images scored:

    mass     = mean_m mean_h  Σ_p A_h,p w_p / Σ_p A_h,p      (the share of the patch attention on the object)
    pointing = mean_m [ w_p* ≥ ½ ],  p* = argmax_p Σ_h A_h,p    (the pointing game on the head-summed map)

each beside its chance level, what a map with no information gives: ``area`` = mean_m Σ_p w_p / G (the mass of a
uniform map) and ``pointing_chance`` = mean_m of the share of patches with w_p ≥ ½ (a uniformly random point).
``mass_per_head`` keeps each head's mean mass, as the reference draws every head. Both scores are this project's
choice (an assumption: the paper evaluates its traits on annotated parts of real birds, which the pocket world does
not have); the test images of the trained classes are scored, and the few-shot training images too, where a v2
world with spurious cues ties a background texture or a position to the class (``train``): an explanation that
looks at the cue rather than the object scores low there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.clip.features import ImageList
from vlprompt.data import pocket, registry

log = logging.getLogger(__name__)

POINTING_COVERAGE = 0.5  # a pointing hit: the map's peak patch is at least half object


def patch_coverage(mask: np.ndarray | torch.Tensor, grid: int) -> torch.Tensor:
    """(grid², ) the share of each patch covered by the object, row-major as the tower's patch tokens, from a
    square silhouette (S, S) with 1 on the object (the image is resized to the tower's input as a whole, so the
    patches cut the silhouette into a grid × grid grid of equal cells)."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a silhouette must be a square (S, S) array, got shape {tuple(m.shape)}")
    return F.adaptive_avg_pool2d(m[None, None], grid).flatten()


def localisation_scores(maps: torch.Tensor, coverage: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, from the maps (M, heads, G) of each image's own class prompt and the coverage (M, G): ``mass``
    (M, heads), ``pointing`` (M,) 0/1, ``area`` (M,) and ``pointing_chance`` (M,)."""
    if maps.ndim != 3 or coverage.shape != (maps.shape[0], maps.shape[2]):
        raise ValueError(
            f"maps (M, heads, G) and coverage (M, G) disagree: {tuple(maps.shape)}, {tuple(coverage.shape)}"
        )
    maps, coverage = maps.float(), coverage.float().to(maps.device)
    mass = (maps * coverage[:, None]).sum(-1) / maps.sum(-1)
    peak = maps.sum(1).argmax(-1)  # (M,)
    hit = coverage.gather(1, peak[:, None]).squeeze(1) >= POINTING_COVERAGE
    return {
        "mass": mass,
        "pointing": hit.float(),
        "area": coverage.mean(-1),
        "pointing_chance": (coverage >= POINTING_COVERAGE).float().mean(-1),
    }


def class_prompt_maps(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, heads, G) the maps of each image's own class prompt from every class's (B, C, heads, G)."""
    return maps[torch.arange(len(labels), device=maps.device), labels.to(maps.device)]


def summarise(scores: dict[str, torch.Tensor]) -> dict:
    """The means :func:`localisation_scores` gives over the images scored, as ``metrics.json`` records them."""
    return {
        "images": int(scores["mass"].shape[0]),
        "mass": round(float(scores["mass"].mean()), 6),
        "area": round(float(scores["area"].mean()), 6),
        "pointing": round(float(scores["pointing"].mean()), 6),
        "pointing_chance": round(float(scores["pointing_chance"].mean()), 6),
        "mass_per_head": [round(float(v), 6) for v in scores["mass"].mean(0)],
    }


@torch.no_grad()
def score_rows(
    method, rows: list, root: Path, world: pocket.World, transform, trained_on: list[str], device, batch_size: int = 64
) -> dict | None:
    """:func:`summarise` over the images ``rows`` ([relpath, world label, name]) of the classes ``trained_on`` (the
    method's class prompts in that order), read through ``transform``; None when no row is of a trained class."""
    index = {name: k for k, name in enumerate(trained_on)}
    rows = [r for r in rows if r[2] in index]
    if not rows:
        return None
    grid = method.frozen.model.visual.grid_size[0]
    parts: dict[str, list[torch.Tensor]] = {}
    was_training = method.training
    method.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            images = torch.stack([ImageList(root, [r[0] for r in chunk], transform)[k] for k in range(len(chunk))])
            labels = torch.tensor([index[r[2]] for r in chunk])
            maps = class_prompt_maps(method.trait_maps(images.to(device)), labels)
            coverage = torch.stack([patch_coverage(pocket.object_mask(root, world, r[0], r[1]), grid) for r in chunk])
            for key, value in localisation_scores(maps, coverage).items():
                parts.setdefault(key, []).append(value.cpu())
    finally:
        method.train(was_training)
    return summarise({key: torch.cat(values) for key, values in parts.items()})


def trait_localisation(
    method, cfg: dict, dataset: str, test_rows: list, train_rows: list, transform, trained_on: list[str], device
) -> dict | None:
    """What a run records (``metrics.json``'s ``trait_localisation``) for a method with ``trait_maps``: the scores on
    the test images and on the few-shot training images of its classes; None for a method without maps, and for a
    dataset whose objects the project cannot locate (anything but a pocket dataset)."""
    if not hasattr(method, "trait_maps"):
        return None
    if registry.get_dataset(dataset, cfg).kind != "pocket":
        log.info("trait localisation: %s has no object masks (only the pocket world's renderer knows)", dataset)
        return None
    root, world = registry.image_root(cfg, dataset), registry.pocket_world(cfg)
    out: dict = {
        "score": "the image's own class prompt's last-block attention over the patches: its mass on the object "
        "(mass, chance: area) and the pointing game on the head-summed map (pointing, chance: pointing_chance)",
    }
    for split, rows in (("test", test_rows), ("train", train_rows)):
        scored = score_rows(method, rows, root, world, transform, trained_on, device)
        if scored is not None:
            out[split] = scored
    return out
