"""Runs of methods with the image encoder in the loop (``inputs = "images"``: VPT, MaPLe, PromptSRC, ...).

The same run as :mod:`vlprompt.training.feature_runs` (one method × dataset × shots × seed, same outputs and
metrics), but reading images instead of the feature bank: the few-shot training images of the training classes
with CoOp's augmentation (random resized crop + flip), the test images with the backbone's test transform. The
optimisation is :func:`vlprompt.training.loop.train_loop`'s; the batch order and every image's augmentation in
epoch e are drawn from (seed, e), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vlprompt.clip.features import ImageList, pick_device, randaugment_transform, train_transform, training_views
from vlprompt.data import registry, splits
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_settings
from vlprompt.io import provenance, read_artefact_json
from vlprompt.methods import MethodContext, MethodError, TrainConfig, get_method
from vlprompt.training import teacher_logits
from vlprompt.training.context import (
    attach_multitask_prompt,
    check_class_names,
    fewshot_training_rows,
    method_context,
    start_job,
    training_classes,
)
from vlprompt.training.evaluate import evaluate_parts
from vlprompt.training.loggers import live_logger
from vlprompt.training.loop import batch_indices, seed_everything, train_loop
from vlprompt.training.records import load_model_state, save_run, save_transfer
from vlprompt.training.teacher import attach_teacher


def _epoch_view(seed: int, epoch: int) -> int:
    """The augmentation stream of an epoch (ImageList seeds each image from (view, relpath))."""
    return 1_000_000 + seed * 100_003 + epoch


class Views(torch.utils.data.Dataset):
    """Several independently augmented views of each image: item k is (V, 3, H, W)."""

    def __init__(self, views: list[ImageList]):
        self.views = views

    def __len__(self):
        return len(self.views[0])

    def __getitem__(self, k: int):
        return torch.stack([v[k] for v in self.views])


def epoch_images(root: Path, relpaths: list[str], transform, seed: int, epoch: int, views: int = 1, exif: bool = False):
    """Epoch ``epoch``'s training images: one augmentation stream, or ``views`` independent ones (view 0 the same
    as the single stream's; view v > 0 seeded by (epoch stream, v))."""
    first = _epoch_view(seed, epoch)
    if views == 1:
        return ImageList(root, relpaths, transform, view=first, exif=exif)
    return Views(
        [
            ImageList(root, relpaths, transform, view=first if v == 0 else f"{first}/{v}", exif=exif)
            for v in range(views)
        ]
    )


class ChosenViews(torch.utils.data.Dataset):
    """One of V fixed views of each image: item k is view ``choice[k]`` of image k (``views``: the V·N items of
    :func:`vlprompt.clip.features.training_views`, view-major)."""

    def __init__(self, views: torch.utils.data.Dataset, choice: torch.Tensor):
        self.views, self.choice = views, choice

    def __len__(self):
        return len(self.choice)

    def __getitem__(self, k: int):
        return self.views[int(self.choice[k]) * len(self.choice) + k]


def image_loop(
    method,
    ctx: MethodContext,
    cfg: TrainConfig,
    root: Path,
    rows: list,
    transform,
    ckpt_path: Path,
    checkpoint_every: int,
    workers: int = 0,
    progress: bool = True,
    stop_after: int | None = None,
    exif: bool = False,
    on_epoch=None,
    fixed_views: int | None = None,
) -> dict:
    """Train ``method`` on the images ``rows`` ([relpath, label, name], labels of the training classes); ``exif``:
    read them as a user's images (``ImageList``). ``fixed_views`` V: each epoch shows one of V fixed views of each
    image (``features.training_views``, the view drawn from the epoch's generator) instead of a fresh augmentation,
    and names each batch's (image, view) pairs to a teacher that reads them from its bank (``select``)."""
    device = ctx.device
    relpaths, labels = [r[0] for r in rows], torch.tensor([r[1] for r in rows])
    n = len(rows)
    views = None if fixed_views is None else training_views(root, relpaths, transform, fixed_views, exif)
    select = getattr(ctx.teacher, "select", None)

    def batches(epoch: int, gen: torch.Generator, steps: int):
        order = torch.randperm(n, generator=gen)
        idxs = [batch_indices(order, s, cfg.batch_size).tolist() for s in range(steps)]
        if views is None:
            images = epoch_images(root, relpaths, transform, ctx.seed, epoch, getattr(method, "train_views", 1), exif)
        else:
            choice = torch.randint(len(views) // n, (n,), generator=gen)  # the view of each image this epoch
            images = ChosenViews(views, choice)
        loader = torch.utils.data.DataLoader(
            images, batch_sampler=idxs, num_workers=workers, pin_memory=device.type == "cuda"
        )
        for idx, x in zip(idxs, loader, strict=True):
            if views is not None and select is not None:
                select(torch.tensor(idx), choice[idx])
            yield x.to(device, non_blocking=True), labels[idx].to(device)

    return train_loop(
        method, cfg, ctx.seed, device, n, batches, ckpt_path, checkpoint_every, progress, stop_after, on_epoch
    )


def training_transform(backbone, mcfg, crop_scale_min: float):
    """The training augmentation a method's config names (``augmentation``): CoOp's random resized crop and flip
    (the default, at ``features.crop_scale_min``) or ``randaugment`` (Dassl's choice as CoPrompt uses it)."""
    mean, std = backbone.model.visual.image_mean, backbone.model.visual.image_std
    kind = getattr(mcfg, "augmentation", "crop_flip")
    if kind == "randaugment":
        return randaugment_transform(backbone.image_size, mean, std)
    if kind != "crop_flip":
        raise MethodError(f"unknown augmentation {kind!r}; use crop_flip or randaugment")
    return train_transform(backbone.image_size, mean, std, crop_scale_min)


def evaluate_images(
    method,
    test_rows: list,
    root: Path,
    transform,
    classes: dict,
    protocol: str,
    trained_on: list[str],
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    exif: bool = False,
) -> dict:
    """:func:`vlprompt.training.evaluate.evaluate` on images: the same parts, closed sets and metrics."""

    @torch.no_grad()
    def predict(rows: list) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(
            ImageList(root, [r[0] for r in rows], transform, exif=exif),
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        preds = []
        for x in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                preds.append(method(x.to(device, non_blocking=True)).argmax(-1).cpu())
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    return evaluate_parts(method, test_rows, classes, protocol, trained_on, predict)


def run(
    cfg: dict,
    dataset: str,
    method_name: str,
    shots: int,
    seed: int,
    out_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train and evaluate one run of an image-input method; write ``model.pt`` and ``metrics.json``."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, cls = start_job(cfg, method_name, seed)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    train_labels = training_classes(cfg, classes)
    train_names = [classes["classnames"][i] for i in train_labels]
    ctx = method_context(cfg, dataset, train_names, device, seed)
    check_class_names(cfg, dataset, classes["classnames"], cls, ctx.backbone)
    attach_teacher(ctx, cls, cfg, dataset, shots, seed)  # reads_teacher methods: the trained teacher
    teacher_logits.attach_logits(ctx, cls, cfg, dataset, shots, seed)  # ... its logits per batch or from its bank
    attach_multitask_prompt(ctx, cls, cfg, dataset, shots, seed)  # reads_multitask_prompt methods (PVP)
    backbone = ctx.backbone
    root, exif = registry.image_root(cfg, dataset), registry.reads_exif(cfg, dataset)
    fcfg = cfg["features"]
    t_load = time.time() - t0
    method = cls(mcfg, ctx).to(device)
    train_info: dict = {}
    ckpt = out_dir / "checkpoint.pt"
    if cls.needs_training:
        rows = fewshot_training_rows(cfg, dataset, shots, seed, train_labels)
        transform = training_transform(backbone, mcfg, fcfg["crop_scale_min"])
        views = teacher_logits.fixed_views(cfg, cls, mcfg)  # distillation from the bank's fixed views (or None)
        prepare_images = getattr(method, "prepare_images", None)
        if prepare_images is not None:  # DAM-VP: clusters of the un-augmented training images, before training
            plain = ImageList(root, [r[0] for r in rows], backbone.preprocess, exif=exif)
            prepare_images(x for x in torch.utils.data.DataLoader(plain, batch_size=fcfg["batch_size"]))
        with live_logger(cfg, out_dir, ckpt) as on_epoch:
            train_info = image_loop(
                method,
                ctx,
                mcfg,
                root,
                rows,
                transform,
                ckpt,
                cfg["train"]["checkpoint_every"],
                fcfg["workers"],
                progress,
                stop_after,
                exif,
                on_epoch,
                views,
            )
        if ctx.teacher is not None:
            train_info["teacher_logits"] = ctx.teacher.source  # per batch, from the bank, or on the fixed views
    t_train = time.time() - t0 - t_load
    test_rows = splits.read_split(registry.split_path(cfg, dataset))["test"]
    metrics = evaluate_images(
        method,
        test_rows,
        root,
        backbone.preprocess,
        classes,
        cfg["protocol"],
        train_names,
        device,
        fcfg["batch_size"],
        fcfg["workers"],
        exif,
    )
    seconds = {"load": round(t_load, 2), "train": round(t_train, 2), "total": round(time.time() - t0, 2)}
    return save_run(
        cfg,
        out_dir,
        metrics,
        method,
        mcfg,
        dataset,
        shots,
        seed,
        train_names,
        train_info,
        seconds,
        provenance(**backbone.provenance(), device=str(device)),
    )


def evaluate_transfer(
    cfg: dict, dataset: str, method_name: str, shots: int, seed: int, target: str, out: str | Path
) -> dict:
    """The image variant of :func:`vlprompt.training.feature_runs.evaluate_transfer`: the model trained on
    ``dataset`` evaluated on every class of ``target`` (cross-dataset, domain generalisation); writes ``out``."""
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    seed_everything(seed)
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    train_names = [classes["classnames"][i] for i in training_classes(cfg, classes)]
    # hand-crafted prompts (VPT's, depth 0) are the target's, as the references build the model for the target
    ctx = method_context(cfg, dataset, train_names, device, seed, template_of=target)
    method = cls(mcfg, ctx).to(device)
    saved = load_model_state(grid.Run(dataset, method_name, shots, seed).dir(cfg), device)
    method.load_trainable_state(saved["state"])
    target_classes = read_artefact_json(grid.classes_path(cfg, target))
    test_rows = splits.read_split(registry.split_path(cfg, target))["test"]
    fcfg = cfg["features"]
    metrics = evaluate_images(
        method,
        test_rows,
        registry.image_root(cfg, target),
        ctx.backbone.preprocess,
        target_classes,
        "all",
        train_names,
        device,
        fcfg["batch_size"],
        fcfg["workers"],
        registry.reads_exif(cfg, target),
    )
    return save_transfer(
        cfg, out, metrics, method_name, dataset, target, shots, seed, cls.needs_training, ctx.backbone, device
    )
