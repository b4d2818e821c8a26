"""The feature bank: frozen CLIP image features, extracted once per backbone × dataset × split × view.

On disk, in ``<results>/features/<backbone key>/<dataset>/`` (``config.backbone_key``: model,
weights tag or file hash, QuickGELU):

- ``test.npy`` (N, D) fp16: every test image, test transform (resize + centre crop);
- ``val.npy`` (N, D) fp16: the union of the few-shot validation subsets, test transform;
- ``train_views.npy`` (V, N, D) fp16: the union of the few-shot training subsets, V augmented views
  (random resized crop + flip, as CoOp trains), so methods on cached features still see augmentation;
- ``<split>.json``: the rows (relpath, label, classname) in bank order and the provenance
  (backbone, weights hash, transform, views).

Arrays are ``.npy`` files, opened memory-mapped. Extraction runs batched through a DataLoader
(``workers`` processes decode and transform), under fp16 autocast on a GPU, into
``<split>.partial.npy``; every ``checkpoint_s`` seconds it flushes the array and records how many
images are done in ``<split>.progress``. A killed run resumes at the first unrecorded batch and,
because view ``v`` of an image is augmented with a generator seeded by (AUG_SEED, v, relpath) —
independent of workers, batches and which other images are in the bank — gives identical
features. The final file appears by rename only when complete and its ``.json`` is written last,
so a second run with the same inputs finds both and touches nothing; a run with other inputs
(rows, backbone, transform, views) re-extracts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vlprompt.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train_views")
AUG_SEED = 20240601
FORMAT = 2  # 2: augmentation seeded by relpath (1: by row index)


class ExtractionInterrupted(RuntimeError):
    """Raised by the test hook ``stop_after_batches`` of :func:`extract_split` (simulates a kill)."""


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


def view_seed(view: int, relpath: str) -> int:
    """Seed of the augmentation of ``relpath`` in view ``view`` (stable across processes and machines)."""
    digest = hashlib.sha256(f"{AUG_SEED}/{view}/{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageList(torch.utils.data.Dataset):
    """Images by path; with ``view`` set, each image is augmented with a generator seeded by (view, relpath)."""

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
        if self.view is None:
            return self.transform(img)
        # torchvision draws from the global generator: seed a private copy of it, leave the caller's alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.view, self.relpaths[k]))
            return self.transform(img)


@torch.inference_mode()
def encode_images(model, dataset: torch.utils.data.Dataset, out: np.ndarray, progress_path: Path,
                  batch_size: int, workers: int, device: torch.device, desc: str, progress: bool = True,
                  checkpoint_s: float = 2.0, stop_after_batches: int | None = None) -> None:
    """Fill ``out`` (N, D) batch by batch, starting after the images recorded in ``progress_path``.

    Every ``checkpoint_s`` seconds (and at the end) the array is flushed, then the number of images
    done is written (atomically) to ``progress_path``: a marker never counts data not on disk.
    """
    from tqdm import tqdm

    n = len(dataset)
    start = int(read_json(progress_path)["images"]) if progress_path.exists() else 0
    if start >= n:
        return
    subset = torch.utils.data.Subset(dataset, range(start, n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda", shuffle=False)
    cuda = device.type == "cuda"
    bar = tqdm(total=n, initial=start, desc=desc, unit="img", disable=not progress, smoothing=0.1)
    done, last = start, time.monotonic()
    for b, images in enumerate(loader, start=1):
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            feats = model.encode_image(images.to(device, non_blocking=True))  # (b, D)
        out[done:done + len(feats)] = feats.float().cpu().numpy()  # cast to the bank's fp16
        done += len(feats)
        bar.update(len(feats))
        if done == n or time.monotonic() - last >= checkpoint_s:
            _flush(out)
            atomic_write_text(progress_path, json.dumps({"images": done, "batch_size": batch_size}))
            last = time.monotonic()
        if stop_after_batches is not None and b >= stop_after_batches and done < n:
            raise ExtractionInterrupted(f"stopped after {b} batches ({done}/{n} images) by the test hook")
    bar.close()


def _flush(arr: np.ndarray) -> None:
    """Write a memory-mapped array (or a view of one) to its file; no-op for plain arrays."""
    while isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
        arr = arr.base
    if isinstance(arr, np.memmap):
        arr.flush()


@dataclasses.dataclass
class ExtractionSpec:
    split: str  # test | val | train_views
    rows: list  # [relpath, label, classname] in bank order
    views: int  # 1 for test/val


def extraction_meta(backbone, spec: ExtractionSpec, transform, scale_min: float) -> dict:
    """What the features of ``spec`` depend on; a bank whose ``.json`` differs is re-extracted."""
    augmented = spec.split == "train_views"
    shape = (spec.views, len(spec.rows), backbone.embed_dim) if augmented else (len(spec.rows), backbone.embed_dim)
    return _jsonable({"split": spec.split, "rows": spec.rows, "shape": list(shape), "dtype": "float16",
                      "transform": repr(transform), "views": spec.views, "aug_seed": AUG_SEED,
                      "scale_min": scale_min, "format": FORMAT, **backbone.provenance()})


def extract_split(backbone, root: Path, spec: ExtractionSpec, out_dir: Path, batch_size: int = 256,
                  workers: int = 0, device: torch.device | None = None, scale_min: float = 0.08,
                  progress: bool = True, checkpoint_s: float = 2.0,
                  stop_after_batches: int | None = None) -> Path:
    """Extract one split into ``out_dir/<split>.npy`` unless it is already complete with the same inputs.

    ``stop_after_batches`` is a test hook: raise :class:`ExtractionInterrupted` after that many
    batches of this call (each followed by a checkpoint when ``checkpoint_s`` is 0), as a kill would.
    """
    out_dir = Path(out_dir)
    final = out_dir / f"{spec.split}.npy"
    meta_path = out_dir / f"{spec.split}.json"
    model = backbone.model
    augmented = spec.split == "train_views"
    if augmented:
        transform = train_transform(backbone.image_size, model.visual.image_mean, model.visual.image_std,
                                    scale_min)
    else:
        if spec.views != 1:
            raise ValueError(f"split {spec.split!r} is not augmented: views must be 1, got {spec.views}")
        transform = backbone.preprocess
    meta = extraction_meta(backbone, spec, transform, scale_min)
    if final.exists() and meta_path.exists():
        if read_json(meta_path) == meta:
            log.info("%s is complete, nothing to do", final)
            return final
        log.warning("%s was extracted from other inputs (rows, backbone or transform): re-extracting", final)
        meta_path.unlink()  # from here on the old array no longer looks complete
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or next(model.parameters()).device
    partial = out_dir / f"{spec.split}.partial.npy"
    partial_meta = out_dir / f"{spec.split}.partial.json"
    progress_path = out_dir / f"{spec.split}.progress"
    if partial.exists() and (not partial_meta.exists() or read_json(partial_meta) != meta):
        log.warning("discarding stale partial extraction %s (different inputs)", partial)
        partial.unlink()
    if partial.exists():
        arr = np.lib.format.open_memmap(partial, mode="r+")
        log.info("resuming %s", partial)
    else:
        progress_path.unlink(missing_ok=True)
        atomic_write_json(partial_meta, meta)
        arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=tuple(meta["shape"]))
    relpaths = [r[0] for r in spec.rows]
    if augmented:  # one flat pass over (view, image): one DataLoader, one progress marker
        dataset = torch.utils.data.ConcatDataset(
            [ImageList(root, relpaths, transform, view=v) for v in range(spec.views)])
    else:
        dataset = ImageList(root, relpaths, transform)
    flat = arr.reshape(-1, arr.shape[-1])  # (V * N, D) view of the memmap
    desc = f"features {out_dir.name}/{spec.split}" + (f" ({spec.views} views)" if augmented else "")
    encode_images(model, dataset, flat, progress_path, batch_size, workers, device, desc, progress,
                  checkpoint_s=checkpoint_s, stop_after_batches=stop_after_batches)
    arr.flush()
    del arr, flat
    os.replace(partial, final)
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete bank
    for p in (progress_path, partial_meta):
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
