"""Runs of methods with the image encoder in the loop (``inputs = "images"``: VPT, MaPLe, PromptSRC, ...).

The same run as :mod:`vlprompt.training.feature_runs` (one method × dataset × shots × seed, same outputs and
metrics), but reading images instead of the feature bank: the few-shot training images of the training classes
with CoOp's augmentation (random resized crop + flip), the test images with the backbone's test transform. The
optimisation is :func:`vlprompt.training.loop.train_loop`'s; the batch order and every image's augmentation in
epoch e are drawn from (seed, e), so a resumed run continues exactly as an uninterrupted one.

A run is :func:`prepare` (context, method, training images), the loop, then :func:`finish` (evaluation, saved
outputs); :mod:`vlprompt.training.batched_images` trains the seeds of a batchable method (VPT-deep) between the
same two in one computation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from vlprompt.clip.features import ImageList, pick_device, randaugment_transform, train_transform, training_views
from vlprompt.data import registry, splits
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_settings
from vlprompt.io import provenance, read_artefact_json
from vlprompt.methods import Method, MethodContext, MethodError, TrainConfig, get_method
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
from vlprompt.training.trait_localisation import trait_localisation


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


def image_batches(
    method,
    ctx: MethodContext,
    cfg: TrainConfig,
    rows: list,
    root: Path,
    transform,
    workers: int = 0,
    exif: bool = False,
    fixed_views: int | None = None,
):
    """``batches(epoch, generator, steps)`` of :func:`~vlprompt.training.loop.train_loop` over the images ``rows``
    ([relpath, label, name]): the batch order from the generator, each image augmented from (seed, epoch).
    ``fixed_views`` V: each epoch shows one of V fixed views of each image (``features.training_views``, the view
    drawn from the epoch's generator) instead of a fresh augmentation, and names each batch's (image, view) pairs to a
    teacher that reads them from its bank (``select``)."""
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

    return batches


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
    read them as a user's images (``ImageList``); ``fixed_views``: as :func:`image_batches`."""
    batches = image_batches(method, ctx, cfg, rows, root, transform, workers, exif, fixed_views)
    return train_loop(
        method,
        cfg,
        ctx.seed,
        ctx.device,
        len(rows),
        batches,
        ckpt_path,
        checkpoint_every,
        progress,
        stop_after,
        on_epoch,
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


@dataclasses.dataclass
class PreparedImageRun:
    """An image-input run built and ready to train: its method, context, training images and what evaluation and
    saving need (the image counterpart of :class:`vlprompt.training.feature_runs.PreparedRun`)."""

    cfg: dict
    dataset: str
    shots: int
    seed: int
    out_dir: Path
    cls: type[Method]
    mcfg: TrainConfig
    method: Method
    ctx: MethodContext
    classes: dict
    train_names: list[str]
    root: Path
    exif: bool
    t0: float
    t_load: float
    rows: list = dataclasses.field(default_factory=list)  # the training images [relpath, label, name]
    transform: Any = None  # their training augmentation
    views: int | None = None  # V fixed views per image when a distilling run reads its teacher's logits bank

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def trains(self) -> bool:
        return self.cls.needs_training

    def batches(self):
        """The run's ``batches(epoch, generator, steps)`` (:func:`image_batches`)."""
        workers = self.cfg["features"]["workers"]
        return image_batches(
            self.method, self.ctx, self.mcfg, self.rows, self.root, self.transform, workers, self.exif, self.views
        )


def prepare(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, out_dir: str | Path) -> PreparedImageRun:
    """Seed the process for the run, build its context and method, read its training images (and let a method
    that looks at them first, DAM-VP, do so)."""
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
    prepared = PreparedImageRun(
        cfg, dataset, shots, seed, out_dir, cls, mcfg, method, ctx, classes, train_names, root, exif, t0, t_load
    )
    if cls.needs_training:
        prepared.rows = fewshot_training_rows(cfg, dataset, shots, seed, train_labels)
        prepared.transform = training_transform(backbone, mcfg, fcfg["crop_scale_min"])
        prepared.views = teacher_logits.fixed_views(cfg, cls, mcfg)  # distillation from the bank's fixed views
        prepare_images = getattr(method, "prepare_images", None)
        if prepare_images is not None:  # DAM-VP: clusters of the un-augmented training images, before training
            plain = ImageList(root, [r[0] for r in prepared.rows], backbone.preprocess, exif=exif)
            prepare_images(x for x in torch.utils.data.DataLoader(plain, batch_size=fcfg["batch_size"]))
    return prepared


def finish(run: PreparedImageRun, train_info: dict, train_seconds: float | None = None) -> dict:
    """After training: evaluation on the test images, ``model.pt`` and ``metrics.json`` written. ``train_seconds``:
    the run's share of a batched training (:mod:`vlprompt.training.batched_images`)."""
    cfg, method, ctx = run.cfg, run.method, run.ctx
    fcfg = cfg["features"]
    t_finish = time.time()
    t_train = time.time() - run.t0 - run.t_load if train_seconds is None else train_seconds
    test_rows = splits.read_split(registry.split_path(cfg, run.dataset))["test"]
    metrics = evaluate_images(
        method,
        test_rows,
        run.root,
        ctx.backbone.preprocess,
        run.classes,
        cfg["protocol"],
        run.train_names,
        ctx.device,
        fcfg["batch_size"],
        fcfg["workers"],
        run.exif,
    )
    localisation = trait_localisation(  # methods with class attention maps (Prompt-CAM) on the pocket world
        method,
        cfg,
        run.dataset,
        test_rows,
        run.rows if run.trains else [],
        ctx.backbone.preprocess,
        run.train_names,
        ctx.device,
    )
    if localisation is not None:
        metrics["trait_localisation"] = localisation
    # trained with others: the run's own load and evaluation plus its share of the training (no overlap)
    total = time.time() - run.t0 if train_seconds is None else run.t_load + train_seconds + time.time() - t_finish
    seconds = {"load": round(run.t_load, 2), "train": round(t_train, 2), "total": round(total, 2)}
    return save_run(
        cfg,
        run.out_dir,
        metrics,
        method,
        run.mcfg,
        run.dataset,
        run.shots,
        run.seed,
        run.train_names,
        train_info,
        seconds,
        provenance(**ctx.backbone.provenance(), device=str(ctx.device)),
    )


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
    prepared = prepare(cfg, dataset, method_name, shots, seed, out_dir)
    train_info: dict = {}
    if prepared.trains:
        with live_logger(cfg, prepared.out_dir, prepared.checkpoint) as on_epoch:
            train_info = train_loop(
                prepared.method,
                prepared.mcfg,
                seed,
                prepared.ctx.device,
                len(prepared.rows),
                prepared.batches(),
                prepared.checkpoint,
                cfg["train"]["checkpoint_every"],
                progress,
                stop_after,
                on_epoch,
            )
        if prepared.ctx.teacher is not None:
            train_info["teacher_logits"] = prepared.ctx.teacher.source  # per batch, from the bank, or fixed views
    return finish(prepared, train_info)


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
