"""Runs of feature-bank methods (``inputs = "features"``): one method × dataset × shots × seed.

Builds the method on the cached feature bank, trains it in :func:`vlprompt.training.loop.train_loop` on random
augmented views of the few-shot images (one view per image and epoch, drawn from (seed, epoch)), or fits it in
closed form, then evaluates on the test features and writes ``model.pt`` and ``metrics.json`` atomically.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from vlprompt.clip.features import FeatureBank, pick_device
from vlprompt.data.registry import get_dataset
from vlprompt.data.splits import read_fewshot
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_settings
from vlprompt.io import provenance, read_artefact_json
from vlprompt.methods import Method, MethodContext, TrainConfig, get_method
from vlprompt.training.context import (
    build_context,
    eval_features,
    start_job,
    unlabelled_features,
    with_layer_statistics,
)
from vlprompt.training.evaluate import evaluate
from vlprompt.training.loggers import live_logger
from vlprompt.training.loop import batch_indices, seed_everything, train_loop
from vlprompt.training.records import load_model_state, save_run, save_transfer


def feature_batches(ctx: MethodContext, cfg: TrainConfig):
    """The ``batches(epoch, generator, steps)`` of a run on ``ctx.train_features`` ((V, N, D): V augmented views of
    N images): a shuffled order and one random view per image and epoch, both drawn from the epoch's generator."""
    device = ctx.device
    feats, labels = ctx.training_data()  # (V, N, D), (N,)
    views, n = feats.shape[0], feats.shape[1]

    def batches(epoch: int, gen: torch.Generator, steps: int):
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        for step in range(steps):
            idx = batch_indices(order, step, cfg.batch_size)
            yield feats[view[idx], idx].to(device), labels[idx].to(device)

    return batches


def feature_loop(
    method,
    ctx: MethodContext,
    cfg: TrainConfig,
    ckpt_path: Path,
    checkpoint_every: int,
    progress: bool = True,
    stop_after: int | None = None,
    on_epoch=None,
) -> dict:
    """Train the method's parameters on ``ctx.train_features`` ((V, N, D): V augmented views of N images);
    resumable from ``ckpt_path``; ``on_epoch`` receives each epoch's row of the curves (a live logger)."""
    n = ctx.training_data()[0].shape[1]
    batches = feature_batches(ctx, cfg)
    info = train_loop(
        method, cfg, ctx.seed, ctx.device, n, batches, ckpt_path, checkpoint_every, progress, stop_after, on_epoch
    )
    return {key: info[key] for key in ("loss_history", "steps_per_epoch", "curves")}


@dataclasses.dataclass
class PreparedRun:
    """A run built and ready to train: its method, context and what evaluation and saving need."""

    cfg: dict
    dataset: str
    shots: int
    seed: int
    out_dir: Path
    cls: type[Method]
    mcfg: TrainConfig
    method: Method
    ctx: MethodContext
    bank: FeatureBank
    classes: dict
    t0: float
    t_load: float
    fitted: bool = False  # fitted in closed form by ``fit`` (no SGD loop)

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def trains(self) -> bool:
        """Whether the SGD loop trains this run (it needs training and ``fit`` did not fit it in closed form)."""
        return self.cls.needs_training and not self.fitted


def prepare(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, out_dir: str | Path) -> PreparedRun:
    """Seed the process for the run, build its context and method (fitted in closed form when it fits so)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, cls = start_job(cfg, method_name, seed)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    ctx, bank, classes = build_context(cfg, dataset, cls, shots, seed, device)
    t_load = time.time() - t0
    method = cls(mcfg, ctx).to(device)
    prepared = PreparedRun(cfg, dataset, shots, seed, out_dir, cls, mcfg, method, ctx, bank, classes, t0, t_load)
    prepared.fitted = cls.needs_training and method.fit(ctx)
    return prepared


def finish(run: PreparedRun, train_info: dict, train_seconds: float | None = None) -> dict:
    """After training: the method's ``after_training``, evaluation (test, and validation when trained), and
    ``model.pt`` and ``metrics.json`` written. ``train_seconds``: the run's share of a batched training."""
    cfg, method, ctx, cls = run.cfg, run.method, run.ctx, run.cls
    device, backbone, train_names = ctx.device, ctx.backbone, ctx.classnames
    t_finish = time.time()
    if run.trains:
        method.after_training(ctx)
    t_train = time.time() - run.t0 - run.t_load if train_seconds is None else train_seconds
    test_rows = run.bank.rows("test")
    test_features = eval_features(cfg, run.bank, test_rows, cls, run.dataset, run.shots)
    metrics = evaluate(method, test_rows, test_features, run.classes, cfg["protocol"], train_names, device)
    if cls.needs_training:  # accuracy on the few-shot val split, the only data defaults are chosen on
        metrics.update(
            validation_metrics(cfg, run.dataset, run.shots, run.seed, method, run.classes, train_names, device)
        )
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
        train_names,
        train_info,
        seconds,
        provenance(**backbone.provenance(), device=str(device)),
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
    """Train and evaluate one run of a feature-bank method; write ``model.pt`` and ``metrics.json`` into ``out_dir``."""
    prepared = prepare(cfg, dataset, method_name, shots, seed, out_dir)
    train_info: dict = {}
    if prepared.trains:
        with live_logger(cfg, prepared.out_dir, prepared.checkpoint) as on_epoch:
            every = cfg["train"]["checkpoint_every"]
            train_info = feature_loop(
                prepared.method, prepared.ctx, prepared.mcfg, prepared.checkpoint, every, progress, stop_after, on_epoch
            )
    return finish(prepared, train_info)


def validation_metrics(
    cfg: dict, dataset: str, shots: int, seed: int, method, classes: dict, train_names: list[str], device: torch.device
) -> dict:
    """The run's metrics on its few-shot validation images (every class: base and new under base2new), each
    key prefixed ``val_``; the method is switched back to its training classes first."""
    try:
        method.set_classes(train_names)
    except NotImplementedError:
        pass
    rows = read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed), cfg["fewshot"].get("allow_fewer", False))["val"]
    stem = grid.fewshot_features(cfg, dataset, shots, seed)
    features = FeatureBank(stem.parent).take(f"{stem.name}.val", [r[0] for r in rows])
    if type(method).reads_layer_statistics:
        stats = grid.fewshot_layer_statistics(cfg, dataset, shots, seed)
        features = with_layer_statistics(features, stats.parent, f"{stats.name}.val", [r[0] for r in rows])
    metrics = evaluate(method, rows, features, classes, cfg["protocol"], train_names, device)
    return {f"val_{k}": v for k, v in metrics.items() if not k.endswith("_per_class")}


def target_model(
    cfg: dict, dataset: str, cls: type[Method], mcfg, shots: int, seed: int, target: str, state: dict, device
) -> tuple[Method, MethodContext]:
    """The model trained on ``dataset`` (its learned ``state``) rebuilt for ``target``: the target's hand-crafted
    template, and its unlabelled images for methods that read them."""
    seed_everything(seed)
    ctx, _, _ = build_context(cfg, dataset, cls, shots, seed, device, for_training=False)
    ctx.template, ctx.dataset = get_dataset(target).template, target  # hand-crafted prompts: the target's
    if cls.reads_unlabelled:  # the target's unlabelled images
        ctx.unlabelled = unlabelled_features(cfg, target, cls)
    method = cls(mcfg, ctx).to(device)
    method.load_trainable_state(state)
    return method, ctx


def target_metrics(cfg: dict, method: Method, ctx: MethodContext, dataset: str, target: str, shots: int) -> dict:
    """``method`` (trained on ``dataset``) on every test image and class of ``target``."""
    target_bank = FeatureBank(grid.features_dir(cfg, target))
    target_classes = read_artefact_json(grid.classes_path(cfg, target))
    rows = target_bank.rows("test")
    features = eval_features(cfg, target_bank, rows, type(method), target, shots, trained_on=dataset)
    return evaluate(method, rows, features, target_classes, "all", ctx.classnames, ctx.device)


def evaluate_transfer(
    cfg: dict, dataset: str, method_name: str, shots: int, seed: int, target: str, out: str | Path
) -> dict:
    """Evaluate the model trained on ``dataset`` on every class of ``target`` (cross-dataset transfer,
    domain generalisation); writes the metrics JSON ``out`` with ``dataset=target``."""
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    saved = load_model_state(grid.Run(dataset, method_name, shots, seed).dir(cfg), device)
    method, ctx = target_model(cfg, dataset, cls, mcfg, shots, seed, target, saved["state"], device)
    metrics = target_metrics(cfg, method, ctx, dataset, target, shots)
    return save_transfer(
        cfg, out, metrics, method_name, dataset, target, shots, seed, cls.needs_training, ctx.backbone, device
    )
