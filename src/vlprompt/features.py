"""The feature bank: frozen CLIP image features, extracted once per backbone × dataset × split × view.

On disk, in ``<results>/features/<backbone key>/<dataset>/``:

- ``test.npy`` (N, D) fp16: every test image, test transform (resize + centre crop);
- ``val.npy`` (N, D) fp16: the union of the few-shot validation subsets, test transform;
- ``train_views.npy`` (V, N, D) fp16: the union of the few-shot training subsets, V augmented views
  (random resized crop + flip, as CoOp trains), so methods on cached features still see augmentation;
- ``<split>.json``: the rows (relpath, label, classname) in bank order and the provenance
  (backbone, weights hash, transform, views).

Arrays are ``.npy`` files, opened memory-mapped. Extraction writes into ``*.partial.npy`` and
records finished batches in ``*.progress``; a killed run resumes at the first unfinished batch and,
because every augmentation is seeded by (seed, view, image), gives identical features. The final
file appears by rename only when complete, so a second run finds it and does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vlprompt.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train_views")
AUG_SEED = 20240601


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_transform(image_size: int, mean, std, scale_min: float = 0.08):
    """CoOp's training augmentation: random resized crop (bicubic) + horizontal flip + CLIP normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class ImageList(torch.utils.data.Dataset):
    """Images by path; item ``k`` of view ``v`` is augmented with a generator seeded by (v, k)."""

    def __init__(self, root: Path, relpaths: Sequence[str], transform, view: int | None = None):
        self.root, self.relpaths, self.transform, self.view = Path(root), list(relpaths), transform, view

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, k: int):
        from PIL import Image

        path = self.root / self.relpaths[k]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise RuntimeError(f"cannot read image {path}: {err}; re-prepare the dataset") from err
        if self.view is not None:  # deterministic augmentation, independent of workers and batches
            torch.manual_seed(AUG_SEED + 1_000_003 * self.view + k)
        return self.transform(img)


@torch.no_grad()
def encode_images(model, dataset: ImageList, out: np.ndarray, done_path: Path, batch_size: int,
                  workers: int, device: torch.device, desc: str, progress: bool = True) -> None:
    """Fill ``out`` (N, D) batch by batch from the first batch not recorded in ``done_path``."""
    from tqdm import tqdm

    n = len(dataset)
    n_batches = (n + batch_size - 1) // batch_size
    start = int(done_path.read_text()) if done_path.exists() else 0
    if start >= n_batches:
        return
    subset = torch.utils.data.Subset(dataset, range(start * batch_size, n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda", shuffle=False)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else _null()
    bar = tqdm(total=n_batches, initial=start, desc=desc, unit="batch", disable=not progress)
    for b, images in enumerate(loader, start=start):
        with amp:
            feats = model.encode_image(images.to(device, non_blocking=True))
        out[b * batch_size: b * batch_size + len(feats)] = feats.float().cpu().numpy().astype(np.float16)
        if b % 8 == 7 or b == n_batches - 1:  # persist progress: flush data first, then the marker
            if isinstance(out, np.memmap):
                out.flush()
            done_path.write_text(str(b + 1))
        bar.update()
    bar.close()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@dataclasses.dataclass
class ExtractionSpec:
    split: str  # test | val | train_views
    rows: list  # [relpath, label, classname] in bank order
    views: int  # 1 for test/val


def extract_split(backbone, root: Path, spec: ExtractionSpec, out_dir: Path, batch_size: int = 256,
                  workers: int = 0, device: torch.device | None = None, scale_min: float = 0.08,
                  progress: bool = True) -> Path:
    """Extract one split into ``out_dir/<split>.npy`` unless it is already complete."""
    out_dir = Path(out_dir)
    final = out_dir / f"{spec.split}.npy"
    meta_path = out_dir / f"{spec.split}.json"
    if final.exists() and meta_path.exists():
        log.info("%s exists, nothing to do", final)
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or next(backbone.model.parameters()).device
    model = backbone.model
    mean, std = model.visual.image_mean, model.visual.image_std
    if spec.views > 1 or spec.split == "train_views":
        transform = train_transform(backbone.image_size, mean, std, scale_min)
    else:
        transform = backbone.preprocess
    n, dim = len(spec.rows), backbone.embed_dim
    shape = (spec.views, n, dim) if spec.split == "train_views" else (n, dim)
    meta = {"split": spec.split, "rows": spec.rows, "shape": list(shape), "dtype": "float16",
            "transform": repr(transform), "views": spec.views, "aug_seed": AUG_SEED,
            "scale_min": scale_min, **backbone.provenance()}
    partial = out_dir / f"{spec.split}.partial.npy"
    partial_meta = out_dir / f"{spec.split}.partial.json"
    if partial.exists() and (not partial_meta.exists() or read_json(partial_meta) != _jsonable(meta)):
        log.warning("discarding stale partial extraction %s (different inputs)", partial)
        for p in out_dir.glob(f"{spec.split}.partial*"):
            p.unlink()
        for p in out_dir.glob(f"{spec.split}.progress*"):
            p.unlink()
    if partial.exists():
        arr = np.lib.format.open_memmap(partial, mode="r+")
        log.info("resuming %s", partial)
    else:
        atomic_write_json(partial_meta, meta)
        arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    relpaths = [r[0] for r in spec.rows]
    for v in range(spec.views if spec.split == "train_views" else 1):
        target = arr[v] if spec.split == "train_views" else arr
        view = v if spec.split == "train_views" else None
        encode_images(model, ImageList(root, relpaths, transform, view), target,
                      out_dir / f"{spec.split}.progress{v}", batch_size, workers, device,
                      desc=f"features {out_dir.name}/{spec.split}" + (f" view {v + 1}/{spec.views}"
                                                                         if view is not None else ""),
                      progress=progress)
    arr.flush()
    del arr
    atomic_write_json(meta_path, meta)
    os.replace(partial, final)
    for p in list(out_dir.glob(f"{spec.split}.progress*")) + [partial_meta]:
        p.unlink(missing_ok=True)
    return final


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def union_rows(subsets: Sequence[Sequence[list]]) -> list:
    """Rows of several few-shot subsets, deduplicated, in a stable (sorted) order."""
    seen = {}
    for rows in subsets:
        for row in rows:
            seen.setdefault(row[0], list(row))
    return [seen[k] for k in sorted(seen)]


class FeatureBank:
    """Read access to one dataset's extracted features (memory-mapped)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._meta: dict[str, dict] = {}
        self._index: dict[str, dict[str, int]] = {}

    def meta(self, split: str) -> dict:
        if split not in self._meta:
            path = self.dir / f"{split}.json"
            if not path.exists():
                raise FileNotFoundError(f"feature bank {self.dir} has no {split!r} features; run the "
                                        f"`extract_features` rule (snakemake) first")
            self._meta[split] = read_json(path)
        return self._meta[split]

    def array(self, split: str) -> np.ndarray:
        return np.load(self.dir / f"{split}.npy", mmap_mode="r")

    def rows(self, split: str) -> list:
        return self.meta(split)["rows"]

    def take(self, split: str, relpaths: Sequence[str]) -> torch.Tensor:
        """Features of the given images (in that order) as float32; train_views gives (V, n, D)."""
        if split not in self._index:
            self._index[split] = {r[0]: i for i, r in enumerate(self.rows(split))}
        index = self._index[split]
        missing = [p for p in relpaths if p not in index]
        if missing:
            raise KeyError(f"{len(missing)} images (e.g. {missing[0]}) are not in {self.dir}/{split}; "
                           f"the feature bank is older than the few-shot subsets: re-run extraction")
        idx = np.array([index[p] for p in relpaths], dtype=np.int64)
        arr = self.array(split)
        sel = arr[:, idx] if split == "train_views" else arr[idx]
        return torch.from_numpy(np.ascontiguousarray(sel, dtype=np.float32))
