"""The feature bank: frozen CLIP image features, extracted once per backbone × view transform × image.

On disk, under ``<results>/features/<backbone key>/<dataset key>/`` (``grid.features_dir``; the backbone
key names the model, weights tag or file hash and QuickGELU, the dataset key the prepared dataset):

- ``test.npy`` (N, D) fp16: every test image, test transform (resize + centre crop);
- ``<views key>/shot<K>_seed<S>.val.npy`` (N, D) fp16: the few-shot subset's validation images, test
  transform; ``<views key>/shot<K>_seed<S>.train.npy`` (V, N, D) fp16: its training images in V augmented
  views (random resized crop + flip, as CoOp trains), so methods on cached features still see
  augmentation. The views key (``grid.views_key``) names V, the crop scale and the augmentation format;
- beside every ``.npy`` its sidecar ``.json``: the rows (relpath, label, classname) in bank order, what
  the features depend on (backbone, weights hash, transform, views) and the file's size and sha256.

Two parts exist only where a method of the experiment declares it reads them
(``vlprompt.experiment.grid``): ``train.npy``
(N, D), the whole training split under the test transform (the unlabelled images of ``unlabelled: train``), and
``test_views<V>_crop<s>.npy`` (V, N, D), every test image in V views: view 0 the original (test transform), views
1 … V−1 random resized crops with scale (s, 1) and flips (TPT's views; :func:`test_view_transform`), each seeded by
(view, relpath) as the training views are.
``test_generated<G>_<generator>.npy`` (G, N, D), every test image in G views drawn by a generator (DiffTPT's
image variations; on the pocket world the renderer as an idealised image-variation model, :class:`RenderedVariations`;
for real data read from the folder the config's ``generated_images.<dataset>.by_image`` names, :class:`FolderViews`,
the generator named ``folder-<the folder's key>``) under the test transform.

The store grows by subset and never rewrites a file: a new (shots, seed) subset's job copies the rows
that a sibling bank of the same folder already holds (same backbone and transform: identical features,
since view ``v`` of an image is augmented with a generator seeded by (AUG_SEED, v, relpath), independent
of workers, batches and which other images are in the bank) and encodes only the images it adds.

Arrays are ``.npy`` files, opened memory-mapped; a reader checks them against their sidecar (size and
sha256) and names a corrupt file with the command that rebuilds it. Extraction runs batched through a
DataLoader (``workers`` processes decode and transform), under fp16 autocast on a GPU, into
``<stem>.partial.npy``; every ``checkpoint_s`` seconds it flushes the array and records how many images
are done in ``<stem>.progress``. A killed run resumes at the first unrecorded batch with identical
features. The final file appears by rename only when complete and its ``.json`` is written last, so a
second run with the same inputs finds both and touches nothing; a run with other inputs (rows, backbone,
transform, views) re-extracts.
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

from vlprompt.io import (
    CorruptArtefactError,
    atomic_write_json,
    atomic_write_text,
    create_memmap,
    file_record,
    read_json,
    verify_file,
)

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train_views", "test_views", "generated_views")
AUGMENTED = ("train_views", "test_views", "generated_views")  # (V, N, D) banks
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

    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def randaugment_transform(image_size: int, mean, std, ops: int = 2, magnitude: int = 10):
    """Dassl's ``randaugment`` input choice as CoPrompt configures it (``TRANSFORMS: [randaugment, normalize]``): a
    resize to the input size (bicubic, no crop, no flip), RandAugment with ``ops`` operations at ``magnitude`` of
    30, CLIP normalisation. torchvision's RandAugment (magnitude m of 30 bins, the same fraction as Dassl's m/30)
    stands in for Dassl's own, whose list of operations differs (a documented difference of the methods using it).
    """
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
            T.RandAugment(num_ops=ops, magnitude=magnitude, num_magnitude_bins=31),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def test_view_transform(image_size: int, mean, std, scale_min: float = 0.08):
    """TPT's test views (azshue/TPT data/datautils.py ``get_preaugment`` then ``preprocess``): random resized crop
    (torchvision's default bilinear interpolation) + horizontal flip + CLIP normalisation."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(scale_min, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def view_seed(view: int | str, relpath: str) -> int:
    """Seed of the augmentation of ``relpath`` in view ``view`` (stable across processes and machines)."""
    digest = hashlib.sha256(f"{AUG_SEED}/{view}/{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ImageList(torch.utils.data.Dataset):
    """Images by path; with ``view`` set, each image is augmented with a generator seeded by (view, relpath)."""

    def __init__(
        self, root: Path, relpaths: Sequence[str], transform, view: int | str | None = None, exif: bool = False
    ):
        """``exif``: apply the EXIF orientation and scale 16-bit images (a user's images, vlprompt.data.images)."""
        self.root, self.relpaths, self.transform, self.view = Path(root), list(relpaths), transform, view
        self.exif = exif

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, k: int):
        from vlprompt.data.images import open_rgb

        path = self.root / self.relpaths[k]
        try:
            img = open_rgb(path, exif=self.exif)
        except (OSError, ValueError) as err:
            raise RuntimeError(f"cannot read image {path}: {err}; re-prepare the dataset") from err
        if self.view is None:
            return self.transform(img)
        # torchvision draws from the global generator: seed a private copy of it, leave the caller's alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.view, self.relpaths[k]))
            return self.transform(img)


def training_views(root: Path, relpaths: Sequence[str], transform, views: int, exif: bool = False):
    """Every image of ``relpaths`` in ``views`` fixed augmented views, view-major (item v·N + i: view v of image
    i, seeded by (v, relpath)): the rows of a (V, N, ·) bank of the training views."""
    return torch.utils.data.ConcatDataset(
        [ImageList(root, relpaths, transform, view=v, exif=exif) for v in range(views)]
    )


class RenderedVariations(torch.utils.data.Dataset):
    """View ``view`` of each image of ``rows`` drawn by a generator instead of read from disk: ``generator``
    ``{"name": "pocket_variation", "world": {World fields}, "style": ..., "wrong_class_rate": p}``, the pocket
    renderer as an idealised image-variation model (:func:`vlprompt.data.pocket.render_variation`)."""

    def __init__(self, generator: dict, rows: Sequence, transform, view: int):
        from vlprompt.data import pocket

        if generator.get("name") != "pocket_variation":
            raise ValueError(f"unknown view generator {generator.get('name')!r}; available: ['pocket_variation']")
        self.world = pocket.World(**generator["world"])
        self.style, self.rate = generator["style"], float(generator["wrong_class_rate"])
        self.rows, self.transform, self.view = list(rows), transform, view

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k: int):
        from vlprompt.data.pocket import render_variation

        relpath, _, classname = self.rows[k][:3]
        img, _ = render_variation(self.world, self.style, classname, relpath, self.view, self.rate)
        return self.transform(img)


class FolderViews(torch.utils.data.Dataset):
    """One view of each test image read from a folder of generated views (DiffTPT's generated images, made
    elsewhere): ``paths`` relative to ``root`` (:func:`vlprompt.data.generated_images.view_paths`)."""

    def __init__(self, root: str, paths: Sequence[str], transform):
        self.root, self.paths, self.transform = root, list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k: int):
        from vlprompt.data.generated_images import read_image

        return self.transform(read_image(self.root, self.paths[k]))


def generated_view_images(generator: dict, rows: Sequence, transform, views: int) -> list:
    """Per view, the dataset of that view of every image of ``rows``: drawn by the pocket renderer
    (``{"name": "pocket_variation", ...}``) or read from a folder of generated views (``{"name": "folder",
    "folder": path, "key": its key}``, the ``by_image`` layout of :mod:`vlprompt.data.generated_images`)."""
    if generator.get("name") == "folder":
        from vlprompt.data.generated_images import view_paths

        paths = view_paths(generator["folder"], [r[0] for r in rows], views)  # [image][view]
        return [FolderViews(generator["folder"], [p[v] for p in paths], transform) for v in range(views)]
    return [RenderedVariations(generator, rows, transform, v) for v in range(views)]


JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")


def choose_decoder(device: torch.device, split: str, relpaths: Sequence[str]) -> str:
    """How an un-augmented split's images reach the encoder: ``"jpeg-on-device"`` (the files' bytes are read by the
    DataLoader, decoded by ``torchvision.io.decode_jpeg`` on the device in batches, then resized, cropped and
    normalised as tensors: :func:`tensor_preprocess`) on a CUDA device when every image is a JPEG, which takes
    decoding and resizing off the CPU workers that bound the bank on a GPU; ``"pil"`` (the backbone's own
    transform in the workers) otherwise, and always for augmented views (seeded PIL augmentation)."""
    if device.type != "cuda" or split in AUGMENTED:
        return "pil"
    return "jpeg-on-device" if relpaths and all(r.endswith(JPEG_SUFFIXES) for r in relpaths) else "pil"


class EncodedImages(torch.utils.data.Dataset):
    """The files' bytes (uint8 tensors), decoded later on the device (:func:`choose_decoder`)."""

    def __init__(self, root: Path, relpaths: Sequence[str]):
        self.root, self.relpaths = Path(root), list(relpaths)

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, k: int) -> torch.Tensor:
        from torchvision.io import read_file

        return read_file(str(self.root / self.relpaths[k]))


def tensor_preprocess(images: Sequence[torch.Tensor], size: int, mean, std) -> torch.Tensor:
    """CLIP's test transform on decoded (3, H, W) uint8 tensors, on their device: resize the shorter side to
    ``size`` (bicubic, antialiased), centre crop, scale to [0, 1], normalise. Equals the PIL transform up to
    the two libraries' resampling (tests/test_features.py bounds the difference of the features)."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for img in images:
        img = img[:3] if img.shape[0] >= 3 else img.expand(3, -1, -1)  # grey -> RGB, drop alpha
        img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        out.append(TF.center_crop(img, [size, size]))
    x = torch.stack(out).float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def decode_on_device(size: int, mean, std, device: torch.device):
    """The ``prepare`` of :func:`encode_images` for ``"jpeg-on-device"``: a batch of file bytes -> (B, 3, S, S)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def prepare(batch: list[torch.Tensor]) -> torch.Tensor:
        return tensor_preprocess(decode_jpeg(batch, mode=ImageReadMode.RGB, device=device), size, mean, std)

    return prepare


@torch.inference_mode()
def encode_images(
    model,
    dataset: ImageList | EncodedImages | torch.utils.data.ConcatDataset,
    out: np.ndarray,
    progress_path: Path,
    batch_size: int,
    workers: int,
    device: torch.device,
    desc: str,
    progress: bool = True,
    checkpoint_s: float = 2.0,
    stop_after_batches: int | None = None,
    prepare=None,
) -> None:
    """Fill ``out`` (N, D) batch by batch, starting after the images recorded in ``progress_path``.
    ``prepare`` turns a batch of the dataset (then a list) into the encoder's input on the device
    (:func:`decode_on_device`); by default the batch is a tensor moved to the device.

    Every ``checkpoint_s`` seconds (and at the end) the array is flushed, then the number of images
    done is written (atomically) to ``progress_path``: a marker never counts data not on disk.
    """
    from tqdm import tqdm

    n = len(dataset)
    start = int(read_json(progress_path)["images"]) if progress_path.exists() else 0
    if start >= n:
        return
    subset = torch.utils.data.Subset(dataset, range(start, n))
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda" and prepare is None,
        shuffle=False,
        collate_fn=list if prepare is not None else None,
    )
    cuda = device.type == "cuda"
    bar = tqdm(total=n, initial=start, desc=desc, unit="img", disable=not progress, smoothing=0.1)
    done, last = start, time.monotonic()
    for b, images in enumerate(loader, start=1):
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            x = prepare(images) if prepare is not None else images.to(device, non_blocking=True)
            feats = model.encode_image(x)  # (b, D)
        out[done : done + len(feats)] = feats.float().cpu().numpy()  # cast to the bank's fp16
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
    base: np.ndarray | None = arr
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    if isinstance(base, np.memmap):
        base.flush()


@dataclasses.dataclass
class ExtractionSpec:
    split: str  # test | val | plain | train (the test transform) | train_views (V augmented views) | test_views
    rows: list  # [relpath, label, classname] in bank order
    views: int  # 1 for test/val
    name: str | None = None  # file stem in the output folder (default: the split)
    exif: bool = False  # read with the EXIF orientation applied, 16-bit scaled (a user's images: data.images)
    generator: dict | None = None  # generated_views: the generator's settings (RenderedVariations, FolderViews)

    @property
    def stem(self) -> str:
        return self.name or self.split


def extraction_meta(backbone, spec: ExtractionSpec, transform, scale_min: float, decoder: str = "pil") -> dict:
    """What the features of ``spec`` depend on; a bank whose ``.json`` differs is re-extracted. ``decoder``
    (:func:`choose_decoder`) is recorded when it is not PIL, so banks decoded on the device are told apart."""
    augmented = spec.split in AUGMENTED
    shape = (spec.views, len(spec.rows), backbone.embed_dim) if augmented else (len(spec.rows), backbone.embed_dim)
    extra: dict[str, object] = {"original_view": repr(backbone.preprocess)} if spec.split == "test_views" else {}
    if spec.generator is not None:
        extra["generator"] = spec.generator
    if spec.exif:  # recorded only when set, so the published and pocket banks' records stay as they were
        extra["exif"] = True
    if decoder != "pil":
        extra["decoder"] = decoder
    return _jsonable(
        {
            "split": spec.split,
            "rows": spec.rows,
            "shape": list(shape),
            "dtype": "float16",
            "transform": repr(transform),
            "views": spec.views,
            "aug_seed": AUG_SEED,
            "scale_min": scale_min,
            "format": FORMAT,
            **backbone.provenance(),
            **extra,
        }
    )


def extract_split(
    backbone,
    root: Path,
    spec: ExtractionSpec,
    out_dir: Path,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | None = None,
    scale_min: float = 0.08,
    progress: bool = True,
    checkpoint_s: float = 2.0,
    stop_after_batches: int | None = None,
    reuse: bool = False,
) -> Path:
    """Extract one bank into ``out_dir/<stem>.npy`` unless it is already complete with the same inputs.

    ``reuse``: copy the rows that other complete banks of ``out_dir`` with the same inputs but other rows
    hold (their features are identical) and encode only the rest. ``stop_after_batches`` is a test hook:
    raise :class:`ExtractionInterrupted` after that many batches of this call (each followed by a
    checkpoint when ``checkpoint_s`` is 0), as a kill would.
    """
    out_dir = Path(out_dir)
    final = out_dir / f"{spec.stem}.npy"
    meta_path = out_dir / f"{spec.stem}.json"
    augmented = spec.split in AUGMENTED
    transform = _transform(backbone, spec, scale_min)
    decoder = choose_decoder(device or next(backbone.model.parameters()).device, spec.split, [r[0] for r in spec.rows])
    meta = extraction_meta(backbone, spec, transform, scale_min, decoder)
    if final.exists() and meta_path.exists():
        if _inputs(read_json(meta_path)) == meta:
            log.info("%s is complete, nothing to do", final)
            return final
        log.warning("%s was extracted from other inputs (rows, backbone or transform): re-extracting", final)
        meta_path.unlink()  # from here on the old array no longer looks complete
    out_dir.mkdir(parents=True, exist_ok=True)
    known = _known_rows(out_dir, spec, meta) if reuse else {}
    missing = [r for r in spec.rows if r[0] not in known]
    if known:
        log.info(
            "%s: %d of %d images are in sibling banks; encoding %d",
            final,
            len(spec.rows) - len(missing),
            len(spec.rows),
            len(missing),
        )
    if known and missing:  # encode the new images into a bank of their own, then assemble
        part = dataclasses.replace(spec, rows=missing, name=f"{spec.stem}.new")
        extract_split(
            backbone,
            root,
            part,
            out_dir,
            batch_size,
            workers,
            device,
            scale_min,
            progress,
            checkpoint_s,
            stop_after_batches,
            reuse=False,
        )
        known.update(
            _known_rows(
                out_dir, part, extraction_meta(backbone, part, transform, scale_min, decoder), stems=[part.stem]
            )
        )
    if known:
        _assemble(spec, meta, known, final, augmented)
    else:
        _encode(
            backbone,
            root,
            spec,
            meta,
            transform,
            out_dir,
            batch_size,
            workers,
            device,
            progress,
            checkpoint_s,
            stop_after_batches,
        )
    copied = len(spec.rows) - len(missing) if known else 0
    atomic_write_json(meta_path, {**meta, "file": file_record(final), "copied_rows": copied})  # last: marks it complete
    for extra in (out_dir / f"{spec.stem}.new.npy", out_dir / f"{spec.stem}.new.json"):
        extra.unlink(missing_ok=True)
    return final


def _transform(backbone, spec: ExtractionSpec, scale_min: float):
    model = backbone.model
    if spec.split == "train_views":
        return train_transform(backbone.image_size, model.visual.image_mean, model.visual.image_std, scale_min)
    if spec.split == "test_views":
        if spec.views < 2:
            raise ValueError(f"test views: the original and at least one augmented view, got views={spec.views}")
        return test_view_transform(backbone.image_size, model.visual.image_mean, model.visual.image_std, scale_min)
    if spec.split == "generated_views":  # the generated images under the test transform (the reference's)
        return backbone.preprocess
    if spec.views != 1:
        raise ValueError(f"split {spec.split!r} is not augmented: views must be 1, got {spec.views}")
    return backbone.preprocess


def _inputs(meta: dict) -> dict:
    """A sidecar without what is recorded after extraction (the file's size and checksum, rows copied)."""
    return {k: v for k, v in meta.items() if k not in ("file", "copied_rows")}


def bank_is_current(final: Path, meta_path: Path, meta: dict) -> bool:
    """Whether the bank ``final`` is complete (its sidecar ``meta_path`` written) with the inputs ``meta``; a bank of
    other inputs loses its sidecar, so that it reads as incomplete until it is rewritten."""
    if not (final.exists() and meta_path.exists()):
        return False
    if _inputs(read_json(meta_path)) == meta:
        log.info("%s is complete, nothing to do", final)
        return True
    log.warning("%s was computed from other inputs: recomputing", final)
    meta_path.unlink()
    return False


def _known_rows(out_dir: Path, spec: ExtractionSpec, meta: dict, stems: list[str] | None = None) -> dict:
    """``{relpath: (array, index)}`` for the images that complete banks in ``out_dir`` with the same
    inputs as ``meta`` (all but the rows) already hold; ``stems`` limits the search to those banks."""
    same = {k: v for k, v in meta.items() if k not in ("rows", "shape", "split")}  # same backbone and transform
    known: dict = {}
    paths = [out_dir / f"{s}.json" for s in stems] if stems else sorted(out_dir.glob("*.json"))
    for path in paths:
        if not stems and (path.name.endswith(".partial.json") or path.stem == spec.stem):
            continue
        try:
            other = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict) or "file" not in other:
            continue
        if {k: v for k, v in _inputs(other).items() if k not in ("rows", "shape", "split")} != same:
            continue
        npy = path.with_suffix(".npy")
        try:
            verify_file(npy, other["file"])
        except (CorruptArtefactError, FileNotFoundError):
            log.warning("ignoring %s for reuse: it does not match its sidecar", npy)
            continue
        arr = np.load(npy, mmap_mode="r")
        for i, row in enumerate(other["rows"]):
            known.setdefault(row[0], (arr, i))
    return known


def _assemble(spec: ExtractionSpec, meta: dict, known: dict, final: Path, augmented: bool) -> None:
    """Write the bank from rows held by other banks (memmaps), atomically."""
    from vlprompt.io import atomic_path

    with atomic_path(final) as tmp:
        arr = create_memmap(tmp, np.float16, tuple(meta["shape"]), name=final)
        for j, row in enumerate(spec.rows):
            src, i = known[row[0]]
            if augmented:
                arr[:, j] = src[:, i]
            else:
                arr[j] = src[i]
        arr.flush()
        del arr


def _encode(
    backbone,
    root: Path,
    spec: ExtractionSpec,
    meta: dict,
    transform,
    out_dir: Path,
    batch_size: int,
    workers: int,
    device,
    progress: bool,
    checkpoint_s: float,
    stop_after_batches: int | None,
) -> None:
    """Encode every row of ``spec`` into ``out_dir/<stem>.npy`` (resumable through ``<stem>.partial.npy``)."""
    model = backbone.model
    device = device or next(model.parameters()).device
    if not spec.rows:  # e.g. ImageNet's validation split (CoOp's ImageNet has none): an empty bank
        np.save(out_dir / f"{spec.stem}.npy", np.zeros(tuple(meta["shape"]), dtype=np.float16))
        return
    partial = out_dir / f"{spec.stem}.partial.npy"
    partial_meta = out_dir / f"{spec.stem}.partial.json"
    progress_path = out_dir / f"{spec.stem}.progress"
    if partial.exists() and (not partial_meta.exists() or read_json(partial_meta) != meta):
        log.warning("discarding stale partial extraction %s (different inputs)", partial)
        partial.unlink()
    if partial.exists():
        arr = np.lib.format.open_memmap(partial, mode="r+")
        log.info("resuming %s", partial)
    else:
        progress_path.unlink(missing_ok=True)
        atomic_write_json(partial_meta, meta)
        # its space allocated now: a full disk is a one-line NoSpaceError here, never a SIGBUS in a mapped write
        arr = create_memmap(partial, np.float16, tuple(meta["shape"]), name=out_dir / f"{spec.stem}.npy")
    relpaths = [r[0] for r in spec.rows]
    dataset: ImageList | EncodedImages | torch.utils.data.ConcatDataset
    if spec.split == "train_views":  # one flat pass over (view, image): one DataLoader, one progress marker
        dataset = training_views(root, relpaths, transform, spec.views, spec.exif)
    elif spec.split == "test_views":  # view 0 the original, then the augmented views
        dataset = torch.utils.data.ConcatDataset(
            [ImageList(root, relpaths, backbone.preprocess, exif=spec.exif)]
            + [ImageList(root, relpaths, transform, view=v, exif=spec.exif) for v in range(1, spec.views)]
        )
    elif spec.split == "generated_views":  # view v of every image, drawn by the generator
        if spec.generator is None:
            raise ValueError("generated views need the generator's settings (ExtractionSpec.generator)")
        dataset = torch.utils.data.ConcatDataset(
            generated_view_images(spec.generator, spec.rows, transform, spec.views)
        )
    elif meta.get("decoder") == "jpeg-on-device":
        dataset = EncodedImages(root, relpaths)
    else:
        dataset = ImageList(root, relpaths, transform, exif=spec.exif)
    prepare = None
    if meta.get("decoder") == "jpeg-on-device":
        visual = model.visual
        prepare = decode_on_device(backbone.image_size, visual.image_mean, visual.image_std, device)
    flat = arr.reshape(-1, arr.shape[-1])  # (V * N, D) view of the memmap
    desc = f"features {out_dir.name}/{spec.stem}" + (f" ({spec.views} views)" if spec.views > 1 else "")
    encode_images(
        model,
        dataset,
        flat,
        progress_path,
        batch_size,
        workers,
        device,
        desc,
        progress,
        checkpoint_s=checkpoint_s,
        stop_after_batches=stop_after_batches,
        prepare=prepare,
    )
    arr.flush()
    del arr, flat
    os.replace(partial, out_dir / f"{spec.stem}.npy")
    for p in (progress_path, partial_meta):
        p.unlink(missing_ok=True)


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def union_rows(subsets: Sequence[Sequence[list]]) -> list:
    """Rows of several few-shot subsets, deduplicated, in a stable (sorted) order."""
    seen: dict[str, list] = {}
    for rows in subsets:
        for row in rows:
            seen.setdefault(row[0], list(row))
    return [seen[k] for k in sorted(seen)]


def load_bank(stem: str | Path, rebuild: str | None = None) -> tuple[np.ndarray, dict]:
    """The memory-mapped array ``<stem>.npy`` and its sidecar ``<stem>.json``, checked against each other.

    A missing sidecar means an incomplete or never-run extraction; a size or checksum that differs from
    the sidecar's record raises :class:`~vlprompt.io.CorruptArtefactError` naming the file and ``rebuild``.
    """
    npy, meta_path = Path(f"{stem}.npy"), Path(f"{stem}.json")
    if not meta_path.exists() or not npy.exists():
        raise FileNotFoundError(
            f"feature bank {npy} is missing or incomplete (no {meta_path.name}); run the "
            f"pipeline (snakemake) to extract it"
        )
    try:
        meta = read_json(meta_path)
    except ValueError as err:
        raise CorruptArtefactError(meta_path, f"unreadable JSON ({err})") from None
    if "file" not in meta:
        raise CorruptArtefactError(meta_path, "no size and checksum recorded (written by an older version)")
    verify_file(npy, meta["file"])
    try:
        arr = np.load(npy, mmap_mode="r")
    except ValueError as err:
        raise CorruptArtefactError(npy, f"not a readable .npy file ({err})") from None
    if list(arr.shape) != list(meta["shape"]):
        raise CorruptArtefactError(npy, f"shape {list(arr.shape)}, its sidecar says {meta['shape']}")
    return arr, meta


class FeatureBank:
    """Read access to banks in one folder by stem (``test``; ``<views key>/shot16_seed1.train``), each
    checked against its sidecar on first use."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._banks: dict[str, tuple[np.ndarray, dict]] = {}
        self._index: dict[str, dict[str, int]] = {}

    def _bank(self, split: str) -> tuple[np.ndarray, dict]:
        if split not in self._banks:
            self._banks[split] = load_bank(self.dir / split)
        return self._banks[split]

    def meta(self, split: str) -> dict:
        return self._bank(split)[1]

    def array(self, split: str) -> np.ndarray:
        return self._bank(split)[0]

    def rows(self, split: str) -> list:
        return self.meta(split)["rows"]

    def take(self, split: str, relpaths: Sequence[str]) -> torch.Tensor:
        """Features of the given images (in that order) as float32; an augmented bank gives (V, n, D)."""
        if split not in self._index:
            self._index[split] = {r[0]: i for i, r in enumerate(self.rows(split))}
        index = self._index[split]
        missing = [p for p in relpaths if p not in index]
        if missing:
            raise KeyError(
                f"{len(missing)} images (e.g. {missing[0]}) are not in {self.dir}/{split}; "
                f"the feature bank is older than the few-shot subsets: re-run extraction"
            )
        idx = np.array([index[p] for p in relpaths], dtype=np.int64)
        arr = self.array(split)
        sel = arr[:, idx] if arr.ndim == 3 else arr[idx]
        return torch.from_numpy(np.ascontiguousarray(sel, dtype=np.float32))
