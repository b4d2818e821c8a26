"""The teacher-logits bank: a frozen teacher's logits over V fixed views of a run's training images, computed once.

A distilling student (``promptkd``, ``caspl_boost``) runs the frozen teacher on every training batch, as the
reference does: E epochs cost E teacher forward passes per image, for each student of the same teacher. With the
config's ``teacher.logits: bank`` the rule ``teacher_logits`` runs the teacher once over V fixed augmented views of
each training image (the feature bank's training-view recipe: CoOp's random resized crop and flip in the student's
preprocessing, view v of an image seeded by (v, relpath), :func:`vlprompt.clip.features.training_views`) and a
student reads its logits: each epoch it sees, for each image, one of those V views drawn from (seed, epoch)
(:func:`vlprompt.training.image_runs.image_loop`), and the loss takes the teacher's logits of that view from the
bank (:class:`vlprompt.methods.promptkd.CachedTeacher`). ``teacher.logits: fixed_views`` draws the same views and
runs the teacher on them per batch: the bank trains the same student (``tests/test_teacher_logits.py``).

On disk, ``<results>/teacher_logits/<teacher key>/<dataset key>/<shots>shot/seed<seed>/<views key>/logits.npy``
(``vlprompt.experiment.teacher.teacher_logits_stem``; the teacher key names its backbone, method and settings, the
views key V, the crop scale, the augmentation format and the student backbone): (V, N, C) float32, the N training
images of the few-shot subset's training classes in the run's order, over its C training classes. Its sidecar
``logits.json`` records the images, the classes, the transform, the teacher's ``model.pt`` (size and sha256) and the
file's own size and sha256; it is written atomically, the sidecar last, and read through the feature bank's reader
(:func:`vlprompt.clip.features.load_bank`): a corrupt file is one line naming it and the command that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlprompt.clip import features
from vlprompt.data import registry
from vlprompt.experiment import grid
from vlprompt.experiment import teacher as teacher_paths
from vlprompt.io import (
    CorruptArtefactError,
    atomic_path,
    atomic_write_json,
    create_memmap,
    file_record,
    read_artefact_json,
)
from vlprompt.methods import MethodError
from vlprompt.methods.promptkd import CachedTeacher, Teacher
from vlprompt.training.context import (
    cached_backbone,
    fewshot_training_rows,
    start_job,
    training_classes,
)
from vlprompt.training.teacher import load_teacher, teacher_method

FORMAT = 1


def bank_views(cfg: dict) -> int:
    """V: the fixed views of each training image (``teacher.bank_views``)."""
    return int(teacher_paths.teacher_block(cfg)["bank_views"])


def view_transform(backbone, cfg: dict):
    """The fixed views' augmentation: CoOp's random resized crop and flip in the student's preprocessing."""
    visual = backbone.model.visual
    return features.train_transform(
        backbone.image_size, visual.image_mean, visual.image_std, cfg["features"]["crop_scale_min"]
    )


def run_images(cfg: dict, dataset: str, shots: int, seed: int) -> tuple[list, list[str]]:
    """The training images a student of (dataset, shots, seed) sees and the names of its training classes."""
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    labels = training_classes(cfg, classes)
    return fewshot_training_rows(cfg, dataset, shots, seed, labels), [classes["classnames"][i] for i in labels]


def bank_meta(cfg: dict, dataset: str, shots: int, seed: int, rows: list, classnames: list[str], transform) -> dict:
    """What the bank's logits depend on: the images, classes and views, and the teacher (its key and weights)."""
    views = bank_views(cfg)
    model = teacher_paths.teacher_dir(cfg, dataset, shots, seed) / "model.pt"
    return features._jsonable(
        {
            "rows": rows,
            "classnames": classnames,
            "shape": [views, len(rows), len(classnames)],
            "dtype": "float32",
            "views": views,
            "transform": repr(transform),
            "aug_seed": features.AUG_SEED,
            "format": features.FORMAT,
            "logits_format": FORMAT,
            "teacher": {"key": teacher_paths.teacher_key(cfg, dataset, shots), "model.pt": file_record(model)},
        }
    )


@torch.no_grad()  # not inference mode: the backbones it loads are cached for the process's training runs
def build_teacher_logits(cfg: dict, dataset: str, shots: int, seed: int, stem: Path, progress: bool = True) -> Path:
    """Write ``<stem>.npy`` and its sidecar unless both exist with the same inputs (the rule ``teacher_logits``)."""
    from tqdm import tqdm

    stem = Path(stem)
    final, meta_path = Path(f"{stem}.npy"), Path(f"{stem}.json")
    device, _ = start_job(cfg, teacher_method(cfg), seed)
    rows, classnames = run_images(cfg, dataset, shots, seed)
    transform = view_transform(cached_backbone(cfg, device), cfg)  # in the student's preprocessing
    meta = bank_meta(cfg, dataset, shots, seed, rows, classnames, transform)
    if features.bank_is_current(final, meta_path, meta):
        return final
    teacher = load_teacher(cfg, dataset, shots, seed, classnames, device)
    views = features.training_views(
        registry.image_root(cfg, dataset),
        [r[0] for r in rows],
        transform,
        meta["views"],
        registry.reads_exif(cfg, dataset),
    )
    fcfg = cfg["features"]
    loader = torch.utils.data.DataLoader(views, batch_size=fcfg["batch_size"], num_workers=fcfg["workers"])
    shape = tuple(meta["shape"])
    with atomic_path(final) as tmp:
        arr = create_memmap(tmp, np.float32, shape, name=final)
        flat, done = arr.reshape(-1, shape[-1]), 0
        for images in tqdm(loader, desc=f"teacher logits {dataset}", unit="batch", disable=not progress):
            # under fp16 autocast on a GPU, as the training loop runs the teacher per batch
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = teacher.logits(images.to(device), classnames)
            flat[done : done + len(logits)] = logits.float().cpu().numpy()
            done += len(logits)
        arr.flush()
        del arr, flat
    atomic_write_json(meta_path, {**meta, "file": file_record(final)})  # last: marks it complete
    return final


def cached_teacher(cfg: dict, dataset: str, shots: int, seed: int, teacher: Teacher, device) -> CachedTeacher:
    """``teacher`` (the trained teacher of (dataset, shots, seed)) with its logits read from its bank (its text
    features are still its own); a bank that is corrupt, or holds other images, classes, views or another teacher, is
    one line."""
    stem = teacher_paths.teacher_logits_stem(cfg, dataset, shots, seed)
    arr, meta = features.load_bank(stem)
    rows, names = run_images(cfg, dataset, shots, seed)
    expected = bank_meta(cfg, dataset, shots, seed, rows, names, view_transform(cached_backbone(cfg, device), cfg))
    stale = [k for k in ("rows", "classnames", "views", "transform", "teacher") if meta.get(k) != expected[k]]
    if stale:
        raise CorruptArtefactError(f"{stem}.npy", f"its {', '.join(stale)} differ from this run's")
    source = {"logits": "bank", "views": meta["views"], "bank": f"{stem}.npy", "sha256": meta["file"]["sha256"]}
    return CachedTeacher(teacher.method, torch.from_numpy(np.array(arr)), names, source)


def attach_logits(ctx, cls, cfg: dict, dataset: str, shots: int, seed: int) -> None:
    """Where a distilling run's teacher logits come from (``teacher.logits``): its teacher (attached by
    :func:`vlprompt.training.teacher.attach_teacher`) per batch, read from the bank, or per batch on the fixed views;
    no-op for other methods."""
    if not cls.reads_teacher:
        return
    source = teacher_paths.logits_source(cfg)
    if source == "bank":
        ctx.teacher = cached_teacher(cfg, dataset, shots, seed, ctx.teacher, ctx.device)
    elif source == "fixed_views":
        ctx.teacher.source = {"logits": "fixed_views", "views": bank_views(cfg)}


def fixed_views(cfg: dict, cls, mcfg) -> int | None:
    """V when a run of ``cls`` trains on the fixed views (a distilling method with ``teacher.logits`` ``bank`` or
    ``fixed_views``), else None; those views are the crop-and-flip ones, so a method must train with them."""
    if not cls.reads_teacher or teacher_paths.logits_source(cfg) == "per_batch":
        return None
    if getattr(mcfg, "augmentation", "crop_flip") != "crop_flip":
        raise MethodError(f"{cls.name}: the teacher-logits bank's views are crop-and-flip ones; use crop_flip")
    return bank_views(cfg)


__all__ = ["attach_logits", "bank_views", "build_teacher_logits", "cached_teacher", "fixed_views"]
