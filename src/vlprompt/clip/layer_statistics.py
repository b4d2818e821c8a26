"""The layer-statistics bank: per image, the mean and std over the tokens of every block of the frozen image tower.

AD-CLIP (``vlprompt.methods.adclip``) builds its prompts from these statistics alone: per block l of the ViT, the
mean μ_l and the standard deviation σ_l (over the T tokens, class token included, of the block's output; σ with the
reference's 2.3e-8 inside the root, :func:`token_statistics`). Running the encoder in the training loop would encode
every source and target batch again at every step; the bank encodes each image once per view and a step reads
2 × L × W numbers per image (``benchmarks/layer_statistics_cost.py`` measures both; docs/domain_adaptation.md).

On disk, under ``<results>/layer_statistics/<backbone key>/<dataset key>/blocks_all/`` (``grid.layer_statistics_dir``;
keyed like the feature bank by the backbone and the prepared dataset, and by the blocks it holds: every block of
the image tower), one ``.npy`` per part with its sidecar ``.json``:

- ``test`` (N, 2·L·W): every test image, test transform;
- ``train`` (N, 2·L·W): the whole training split, test transform (the target's unlabelled images);
- ``<views key>/shot<K>_seed<S>.train`` (V, N, 2·L·W): a few-shot subset's training images in the V augmented views of
  the feature bank (the same transform and the same seeds, :func:`vlprompt.clip.features.view_seed`, so view v of an
  image here is view v of the feature bank's row); ``.val`` (N, 2·L·W) its validation images.

A row is the flattened (L, 2, W) array [[μ_1, σ_1], …, [μ_L, σ_L]] in fp16 (the sidecar's ``layout``). The
sidecar records what the statistics depend on (the feature bank's record of the rows, backbone and transform,
plus the layout) and the file's size and sha256: :class:`vlprompt.clip.features.FeatureBank` reads the bank and
names a corrupt file in one line with the command that rebuilds it, and the Snakefile's integrity check
(``vlprompt.pipeline.integrity``) moves a truncated one aside before a run, as for the feature bank. The file is
written whole, atomically, with its sidecar last (no resume: one bank is a few MiB on the pocket CLIP and
~36 KiB per view at ViT-B/16).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vlprompt.clip import features
from vlprompt.io import atomic_path, atomic_write_json, create_memmap, file_record

log = logging.getLogger(__name__)

EPS_VAR = 2.3e-8  # AD-CLIP's AdaIN.sigma constant inside the square root
FORMAT = 1
BLOCKS = "blocks_all"  # the bank's blocks: every block of the image tower (the folder in its path)


def token_statistics(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, W) tokens of one block -> (B, 2, W): their mean and sqrt((Σ_t (h_t − μ)² + 2.3e-8) / T)."""
    mu = tokens.mean(1)
    sigma = ((tokens - mu.unsqueeze(1)).pow(2).sum(1) + EPS_VAR).div(tokens.shape[1]).sqrt()
    return torch.stack([mu, sigma], dim=1)


def image_blocks(model) -> torch.nn.ModuleList:
    """The residual blocks of an open_clip ViT image tower."""
    transformer = getattr(model.visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        raise ValueError(f"{type(model.visual).__name__} is not a ViT: layer statistics need the image tower's blocks")
    return transformer.resblocks


def block_statistics(model, images: torch.Tensor) -> torch.Tensor:
    """(B, L, 2, W) statistics of every block's output tokens for a batch of images (forward hooks)."""
    blocks = image_blocks(model)
    batch_first = getattr(model.visual.transformer, "batch_first", True)
    stats: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        tokens = output if batch_first else output.transpose(0, 1)  # (B, T, W)
        stats.append(token_statistics(tokens.float()))

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(stats, dim=1)


def layout(backbone) -> dict:
    """The shape of one row before flattening: blocks, (mean, std), width."""
    blocks = image_blocks(backbone.model)
    return {"blocks": len(blocks), "stats": ["mean", "std"], "width": int(backbone.model.visual.transformer.width)}


def row_width(shape: dict) -> int:
    return shape["blocks"] * 2 * shape["width"]


def statistics_meta(backbone, spec: features.ExtractionSpec, transform, scale_min: float) -> dict:
    """What the statistics of ``spec`` depend on: the feature bank's record of the same images, with this bank's
    shape, layout and format."""
    meta = features.extraction_meta(backbone, spec, transform, scale_min)
    shape = layout(backbone)
    n = len(spec.rows)
    meta["shape"] = [spec.views, n, row_width(shape)] if spec.split in features.AUGMENTED else [n, row_width(shape)]
    meta["layout"] = shape
    meta["statistics_format"] = FORMAT
    meta["eps_var"] = EPS_VAR
    return features._jsonable(meta)


@torch.inference_mode()
def extract_statistics(
    backbone,
    root: Path,
    spec: features.ExtractionSpec,
    out_dir: Path,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | None = None,
    scale_min: float = 0.08,
    progress: bool = True,
) -> Path:
    """Write ``out_dir/<stem>.npy`` and its sidecar unless both exist with the same inputs."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    final, meta_path = out_dir / f"{spec.stem}.npy", out_dir / f"{spec.stem}.json"
    transform = features._transform(backbone, spec, scale_min)
    meta = statistics_meta(backbone, spec, transform, scale_min)
    if features.bank_is_current(final, meta_path, meta):
        return final
    device = device or next(backbone.model.parameters()).device
    relpaths = [r[0] for r in spec.rows]
    if spec.split == "train_views":  # view v of image i: the feature bank's view v (same transform, same seed)
        dataset: features.ImageList | torch.utils.data.ConcatDataset = features.training_views(
            root, relpaths, transform, spec.views, spec.exif
        )
    else:
        dataset = features.ImageList(root, relpaths, transform, exif=spec.exif)
    shape = tuple(meta["shape"])
    with atomic_path(final) as tmp:
        arr = create_memmap(tmp, np.float16, shape, name=final)
        flat = arr.reshape(-1, shape[-1])
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
        done = 0
        bar = tqdm(total=len(dataset), desc=f"layer statistics {spec.stem}", unit="img", disable=not progress)
        for images in loader:
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                stats = block_statistics(backbone.model, images.to(device))  # (b, L, 2, W)
            flat[done : done + len(stats)] = stats.flatten(1).float().cpu().numpy()
            done += len(stats)
            bar.update(len(stats))
        bar.close()
        arr.flush()
        del arr, flat
    atomic_write_json(meta_path, {**meta, "file": file_record(final)})  # last: marks it complete
    return final


def split_row(rows: torch.Tensor, shape: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2·L·W) rows -> (μ, σ), each (L, ..., W) as AD-CLIP's projectors take them."""
    stats = rows.unflatten(-1, (shape["blocks"], 2, shape["width"]))  # (..., L, 2, W)
    stats = stats.movedim(-3, 0)  # (L, ..., 2, W)
    return stats[..., 0, :], stats[..., 1, :]
