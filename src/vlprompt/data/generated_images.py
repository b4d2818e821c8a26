"""Folders of generated (or retrieved) images that a method reads instead of the pocket renderer's stand-ins.

Two methods put an image generator in their data: LAPT trains on images synthesised for every in-distribution and
negative label (its paper generates them with a text-to-image model and retrieves others), DiffTPT tunes its test-time
prompt on image variations of each test image (Stable Diffusion image variations, made beforehand). On the pocket
world the renderer stands in for both generators. On real data the images are made elsewhere and named in the config,
per dataset, under ``generated_images`` (schema: ``experiment/schemas/config.schema.yaml``; guide:
``docs/generated_images.md``)::

    generated_images:
      imagenet:
        by_label: /data/lapt_imagenet       # LAPT: <folder>/<label>/<image>
        by_image: /data/difftpt_imagenet    # DiffTPT: <folder>/<test image's path without suffix>_<i>.<suffix>

Layouts:

- ``by_label``: one sub-folder per label, named as the label with spaces or underscores (``red circle``,
  ``red_circle``; case ignored, as OpenOOD-VLM's generation scripts name theirs with ``_``), holding that label's
  images (any of :data:`vlprompt.data.images.EXTENSIONS`, sub-folders included). LAPT reads ``synth_per_label``
  images per label, drawn without replacement by the run's seed from the label's sorted files; every ID class needs
  a folder, and the negative labels are mined among the vocabulary's labels that have one.
- ``by_image``: per test image whose path in the split file is ``<dir>/<stem>.<suffix>``, its generated views
  ``<folder>/<dir>/<stem>_<i>.<any image suffix>`` for i = 0 … G − 1: the layout DiffTPT's ``image_generator_R.py``
  writes (``<save_image_gen>/<class folder>/<stem>_<i><suffix>``, beside a copy of the original, which is not read)
  when its ``data_dir`` is the folder the split's paths are relative to.

The folder's key (:func:`folder_key`) is a hash of its listing: every image file's relative path, size and
modification time, as a user dataset's key (:mod:`vlprompt.data.user`), so that replacing or adding an image gives a
new key without reading every file at every evaluation of the DAG. It names the bank of generated views
(``test_generated<G>_folder-<key>``) and enters LAPT's run hash, so a changed folder re-extracts and re-trains what
depends on it and nothing else. Folders are read in place, never written to.

Every problem a user can cause is one line naming the folder, the file or the label and the fix
(:class:`GeneratedImagesError`): a folder that does not exist, a label without a folder (or two folders for one
label), fewer images than asked, a test image without all its views, an unreadable image.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlprompt.data.images import is_image_name, open_rgb
from vlprompt.io import config_hash

KINDS = {
    "by_label": "images per label (LAPT's training images): <folder>/<label>/<image>",
    "by_image": "generated views per test image (DiffTPT): <folder>/<test image's path without suffix>_<i>.<suffix>",
}
FORMAT = 1  # of the key: a change of what enters it changes every folder's key


class GeneratedImagesError(ValueError):
    """A folder of generated images is unusable; the message names the folder, file or label and the fix."""


def folder(cfg: dict, dataset: str | None, kind: str) -> Path | None:
    """The folder the config names for ``dataset``'s ``kind`` (:data:`KINDS`), or None when it names none."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of generated images {kind!r}; available: {sorted(KINDS)}")
    entry = (cfg.get("generated_images") or {}).get(dataset) or {}
    return Path(entry[kind]) if entry.get(kind) else None


def label_key(name: str) -> str:
    """How a label and a folder name are compared: lower case, ``_`` as a space, runs of whitespace one space."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def _check_root(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise GeneratedImagesError(
            f"generated images: the folder {root} ({what}) does not exist or is not a folder; "
            "create it or correct the path in the config's generated_images"
        )
    return root


def listing(root: str | Path) -> tuple[tuple[str, int, int], ...]:
    """Every image file under ``root``: (relative path, size, modification time in ns), sorted."""
    root = _check_root(Path(root), "generated images")
    return _listing(str(root.resolve()))


@functools.lru_cache(maxsize=16)
def _listing(root: str) -> tuple[tuple[str, int, int], ...]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if not is_image_name(name) or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out.append((os.path.relpath(path, root).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def forget() -> None:
    """Drop the listings read so far (files changed within this process)."""
    _listing.cache_clear()


def folder_key(root: str | Path) -> str:
    """Hash (8 hex digits) of the folder's listing (module docstring): a changed folder gets a new key."""
    files = listing(root)
    if not files:
        raise GeneratedImagesError(f"generated images: the folder {root} holds no image; put the images there")
    return config_hash({"format": FORMAT, "files": [list(f) for f in files]})[:8]


def provenance(root: str | Path) -> dict:
    """What a run records of the folder it read: its path, key and number of images."""
    return {"folder": str(root), "key": folder_key(root), "images": len(listing(root))}


def read_image(root: str | Path, relpath: str):
    """The image ``root/relpath`` as 8-bit RGB (EXIF orientation applied, as a user's images are read)."""
    path = Path(root) / relpath
    try:
        return open_rgb(path, exif=True)
    except (OSError, ValueError) as err:
        raise GeneratedImagesError(
            f"generated images: cannot read {path} ({type(err).__name__}: {err}); replace or delete the file"
        ) from None


# ---- by label (LAPT) ---------------------------------------------------------------------------------------------


def label_folders(root: str | Path) -> dict[str, list[str]]:
    """``{label key: sorted image paths relative to root}``, one entry per sub-folder of ``root`` that holds images."""
    root = _check_root(Path(root), "images per label")
    by_folder: dict[str, list[str]] = {}
    for rel, _, _ in listing(root):
        top, sep, _ = rel.partition("/")
        if sep:  # files directly in root belong to no label
            by_folder.setdefault(top, []).append(rel)
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, files in sorted(by_folder.items()):
        key = label_key(name)
        if key in out:
            raise GeneratedImagesError(
                f"generated images: {root} has two folders for the label {key!r} ({seen[key]!r} and {name!r}); "
                "merge them into one"
            )
        out[key], seen[key] = files, name
    return out


def labels_present(root: str | Path) -> set[str]:
    """The label keys that have a folder with images under ``root``."""
    return set(label_folders(root))


def label_images(root: str | Path, labels: Sequence[str], per_label: int, seed: int) -> list[tuple[str, int]]:
    """``(relative path, label index)`` of ``per_label`` images of every label of ``labels``, in label order: each
    label's images drawn without replacement by ``seed`` from its folder's sorted files."""
    folders = label_folders(root)
    rng = np.random.default_rng(seed)
    out = []
    for index, label in enumerate(labels):
        files = folders.get(label_key(label))
        if files is None:
            raise GeneratedImagesError(
                f"generated images: {root} has no folder for the label {label!r} (expected "
                f"{Path(root) / label.replace(' ', '_')}/); add its images or leave the class out"
            )
        if len(files) < per_label:
            raise GeneratedImagesError(
                f"generated images: the folder of the label {label!r} in {root} holds {len(files)} images, "
                f"{per_label} are read per label (synth_per_label); add images or lower synth_per_label"
            )
        for k in sorted(rng.choice(len(files), per_label, replace=False).tolist()):
            out.append((files[k], index))
    return out


# ---- by image (DiffTPT) ------------------------------------------------------------------------------------------


def view_paths(root: str | Path, relpaths: Sequence[str], views: int) -> list[list[str]]:
    """``[image][view]`` paths (relative to ``root``) of the ``views`` generated views of each test image
    ``relpaths`` (module docstring's ``by_image`` layout); one line naming the first image short of views."""
    root = _check_root(Path(root), "generated views per test image")
    by_stem: dict[str, str] = {}
    for rel, _, _ in listing(root):
        by_stem.setdefault(rel.rsplit(".", 1)[0], rel)
    out, short = [], []
    for relpath in relpaths:
        stem = relpath.rsplit(".", 1)[0] if "." in Path(relpath).name else relpath
        found = [by_stem.get(f"{stem}_{i}") for i in range(views)]
        if any(f is None for f in found):
            short.append((relpath, sum(f is not None for f in found)))
        out.append(found)
    if short:
        relpath, have = short[0]
        more = f" (and {len(short) - 1} more test images)" if len(short) > 1 else ""
        stem = relpath.rsplit(".", 1)[0]
        raise GeneratedImagesError(
            f"generated images: {root} holds {have} of the {views} generated views of the test image {relpath}"
            f"{more}, expected {root}/{stem}_0.<suffix> … _{views - 1}.<suffix>; generate them or lower "
            "generated_views"
        )
    return out  # type: ignore[return-value]
