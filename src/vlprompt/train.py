"""The shared training loop: one run = one method × dataset × shots × seed.

Seeds everything, builds the method on the cached feature bank, trains it (SGD/AdamW, cosine
schedule with constant warm-up, fp16 autocast on GPU, progress bar), checkpoints every few
epochs and resumes from the checkpoint after a kill, then evaluates and writes ``model.pt`` and
``metrics.json`` atomically. The random stream of epoch e is seeded from (seed, e), so a resumed
run continues exactly as an uninterrupted one and ends with identical metrics.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from vlprompt import grid
from vlprompt.backbone import PromptedTextEncoder, load_backbone_from_config
from vlprompt.bank_splits import BankSplits, UnlabelledFeatures
from vlprompt.config import method_config_hash, method_settings
from vlprompt.data.registry import get_dataset, split_path
from vlprompt.data.splits import read_fewshot, subsample_classes
from vlprompt.evaluate import evaluate
from vlprompt.features import FeatureBank, pick_device
from vlprompt.io import (
    CorruptArtefactError,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    file_record,
    provenance,
    read_artefact_json,
    verify_file,
)
from vlprompt.methods import MethodContext, TrainConfig, get_method

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(cfg: TrainConfig, epoch: int, step: int = 0, steps: int = 1) -> float:
    """Constant warm-up for ``warmup_epochs``, then cosine annealing over ``epochs``: stepped per epoch
    (Dassl), or with ``lr_schedule="step"`` per iteration ``step`` of ``steps`` (CosineAnnealingLR over
    epochs × steps iterations, as Tip-Adapter-F)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.lr_schedule == "step":
        t = (epoch - cfg.warmup_epochs) * steps + step
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / (cfg.epochs * steps)))
    if cfg.lr_schedule != "epoch":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; use epoch or step")
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


def loop_setup(method, cfg: TrainConfig, device: torch.device, n: int):
    """Optimizer over the method's trainable parameters, fp16 grad scaler (CUDA only) and steps per epoch
    for ``n`` training images (Dassl: N // batch size, at least one; ``drop_last=False``: ceil(N / batch))."""
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} has nothing to train")
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    steps = max(cfg.min_steps_per_epoch, n // cfg.batch_size if n >= cfg.batch_size else 1,
                0 if cfg.drop_last else math.ceil(n / cfg.batch_size))
    return make_optimizer(cfg, params), scaler, steps


def sgd_loop(method, ctx: MethodContext, cfg: TrainConfig, ckpt_path: Path, checkpoint_every: int,
             progress: bool = True, stop_after: int | None = None) -> dict:
    """Train the method's parameters on ``ctx.train_features``; resumable from ``ckpt_path``."""
    from tqdm import tqdm

    device = ctx.device
    feats, labels = ctx.train_features, ctx.train_labels  # (V, N, D), (N,)
    views, n = feats.shape[0], feats.shape[1]
    opt, scaler, steps = loop_setup(method, cfg, device, n)
    start, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        method.load_trainable_state(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["epoch"], state["history"]
        log.info("resuming %s from epoch %d", ckpt_path, start)
    method.train()
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=f"train {method.name}",
               disable=not progress, unit="epoch")
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        torch.manual_seed(ctx.seed * 1_000_003 + epoch)  # the whole epoch's randomness, resumable
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        total = 0.0
        for step in range(steps):
            if cfg.lr_schedule == "step":
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, epoch, step, steps)
            idx = order[(step * cfg.batch_size) % n:][: cfg.batch_size]
            x = feats[view[idx], idx].to(device)
            y = labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss, parts = method.loss(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if hasattr(method, "adjust_gradients"):  # ProGrad-style gradient surgery
                scaler.unscale_(opt)
                method.adjust_gradients(x, y)
            scaler.step(opt)
            scaler.update()
            total += loss.item()
        history.append(total / steps)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        done = epoch + 1
        if done % checkpoint_every == 0 and done < cfg.epochs:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"model": method.trainable_state(), "optimizer": opt.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": done, "history": history}, tmp)
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after epoch {done} (stop_after)")
    method.eval()
    return {"loss_history": history, "steps_per_epoch": steps}


_BACKBONES: dict = {}


def _cached_backbone(cfg: dict, device: torch.device):
    """Load the frozen backbone once per process (a job may train several runs; nothing modifies it)."""
    key = (json.dumps(cfg["backbone"], sort_keys=True), str(device))
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone_from_config(cfg, device)
    return _BACKBONES[key]


def run_many(cfg: dict, dataset: str, method_name: str, runs: list[tuple[int, int]], progress: bool = True):
    """Train several (shots, seed) runs of one method on one dataset in this process, each into its own
    run directory, skipping runs that are already complete. Saves the per-process start-up cost
    (importing torch and open_clip, loading the backbone), which dominates on small CPU jobs."""
    out = []
    for shots, seed in runs:
        run_dir = grid.Run(dataset, method_name, shots, seed).dir(cfg)
        if is_complete(cfg, run_dir, method_name, dataset, shots):
            log.info("%s is complete, skipping", run_dir)
            continue
        out.append(run(cfg, dataset, method_name, shots, seed, run_dir, progress))
    return out


def is_complete(cfg: dict, run_dir: Path, method_name: str, dataset: str, shots: int) -> bool:
    """A run directory whose metrics, with this config's settings for the run, and intact model are there."""
    try:
        metrics = read_artefact_json(run_dir / "metrics.json")
        verify_file(run_dir / "model.pt", metrics["artefacts"]["model.pt"])
    except (FileNotFoundError, CorruptArtefactError, KeyError):
        return False
    return metrics.get("config_hash") == method_config_hash(cfg, method_name, dataset, shots)


def load_model_state(run_dir: Path, device: torch.device) -> dict:
    """A finished run's ``model.pt``, checked against the size and checksum its ``metrics.json`` recorded."""
    metrics = read_artefact_json(run_dir / "metrics.json")
    record = metrics.get("artefacts", {}).get("model.pt")
    if record is None:
        raise CorruptArtefactError(run_dir / "metrics.json", "no record of model.pt (written by an older version)")
    verify_file(run_dir / "model.pt", record)
    return torch.load(run_dir / "model.pt", map_location=device, weights_only=False)


def build_context(cfg: dict, dataset: str, cls, shots: int, seed: int, device: torch.device,
                  for_training: bool = True):
    """The method's context for a run: backbone, training classes, few-shot features (if trained), and what the
    method declares it reads: the unlabelled images' features, the multitask prompt it starts from (when
    ``for_training``; a trained model's evaluation loads its own state instead).

    Returns (context, feature bank, classes.json content). Training classes are the base classes
    under base2new and all classes under the other protocols.
    """
    backbone = _cached_backbone(cfg, device)
    bank = FeatureBank(grid.features_dir(cfg, dataset))
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    names = classes["classnames"]
    train_labels = classes["base"] if cfg["protocol"] == "base2new" else list(range(len(names)))
    ctx = MethodContext(backbone=backbone, encoder=PromptedTextEncoder(backbone.model),
                        classnames=[names[i] for i in train_labels], template=get_dataset(dataset).template,
                        device=device, seed=seed, dataset=dataset)
    if cls.needs_training:
        fewshot = read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed), cfg["fewshot"].get("allow_fewer", False))
        train_rows = subsample_classes(fewshot["train"], train_labels)
        val_rows = subsample_classes(fewshot["val"], train_labels)
        stem = grid.fewshot_features(cfg, dataset, shots, seed)
        subset_bank = FeatureBank(stem.parent)
        ctx.train_features = subset_bank.take(f"{stem.name}.train", [r[0] for r in train_rows])
        ctx.train_labels = torch.tensor([r[1] for r in train_rows])
        ctx.val_features = subset_bank.take(f"{stem.name}.val", [r[0] for r in val_rows])
        ctx.val_labels = torch.tensor([r[1] for r in val_rows])
        ctx.train_crop_scale_min = subset_bank.meta(f"{stem.name}.train").get("scale_min")
        ctx.load_split = BankSplits(bank, train_labels, train_rows, split_path(cfg, dataset),
                                    plain=(subset_bank, f"{stem.name}.plain"))
    if cls.reads_unlabelled:
        ctx.unlabelled = unlabelled_features(cfg, dataset)
    if cls.reads_multitask_prompt and shots > 0 and for_training:
        ctx.multitask_prompt = load_multitask_prompt(cfg, cls.name, shots, seed, device)
    return ctx, bank, classes


def unlabelled_features(cfg: dict, dataset: str) -> UnlabelledFeatures:
    """The features, without labels, of ``dataset``'s images of the split the config's ``unlabelled`` names."""
    split = cfg.get("unlabelled", "none")
    if split == "none":
        from vlprompt.config import ConfigError

        raise ConfigError("a method reads the target's unlabelled images but the config's `unlabelled` is none")
    return UnlabelledFeatures(FeatureBank(grid.features_dir(cfg, dataset)), split)


def test_view_features(cfg: dict, dataset: str, method: str, shots: int, rows: list,
                       trained_on: str | None = None) -> torch.Tensor:
    """(N, V, D) features of the test images ``rows`` in V views (view 0 the original), for ``reads_test_views``."""
    stem = grid.test_views_stem(cfg, dataset, method, shots, trained_on)
    views = FeatureBank(stem.parent).take(stem.name, [r[0] for r in rows])  # (V, N, D)
    return views.transpose(0, 1).contiguous()


def eval_features(cfg: dict, bank: FeatureBank, rows: list, cls, dataset: str, shots: int,
                  trained_on: str | None = None) -> torch.Tensor:
    """What the method classifies for the test images ``rows``: their features, or their views."""
    if cls.reads_test_views:
        return test_view_features(cfg, dataset, cls.name, shots, rows, trained_on)
    return bank.take("test", [r[0] for r in rows])


def load_multitask_prompt(cfg: dict, method: str, shots: int, seed: int, device: torch.device) -> dict:
    """The multitask stage's state for (shots, seed), checked against its record; ``source`` names the file."""
    folder = grid.multitask_dir(cfg, method, shots, seed)
    state = load_model_state(folder, device)["state"]
    return {**state, "source": str(folder / "model.pt")}


def train_multitask(cfg: dict, method_name: str, shots: int, seed: int, out_dir: str | Path,
                    progress: bool = True) -> dict:
    """The multitask stage of a ``reads_multitask_prompt`` method: one prompt trained on the few-shot data of every
    source dataset (config ``sources``) at once, written to ``out_dir/model.pt`` with ``metrics.json`` (resumable
    from ``out_dir/checkpoint.pt``). The method class merges the sources (``merge_sources``) and gives the stage's
    settings (``source_config``)."""
    import importlib

    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, cls = start_job(cfg, method_name, seed)
    sources = grid.multitask_sources(cfg)
    if not cls.reads_multitask_prompt or not sources:
        raise ValueError(f"{method_name} has no multitask stage, or the config lists no `sources`")
    mcfg = cls.source_config(cls.make_config(method_settings(cfg, method_name, None, shots)))
    contexts = [build_context(cfg, source, cls, shots, seed, device, for_training=False)[0] for source in sources]
    ctx = importlib.import_module(cls.__module__).merge_sources(contexts)
    method = cls(mcfg, ctx).to(device)
    info = sgd_loop(method, ctx, mcfg, out_dir / "checkpoint.pt", cfg["train"]["checkpoint_every"], progress)
    prov = provenance(**ctx.backbone.provenance(), device=str(device))
    atomic_torch_save(out_dir / "model.pt", {"method": method_name, "state": method.trainable_state(),
                                             "classnames": ctx.classnames, "sources": sources, "provenance": prov})
    metrics = {"method": method_name, "stage": "multitask", "sources": sources, "shots": shots, "seed": seed,
               "classes": len(ctx.classnames), "images": int(ctx.train_features.shape[1]),
               "config_hash": method_config_hash(cfg, method_name, None, shots), "hyperparameters": _asdict(mcfg),
               "train": info, "seconds": round(time.time() - t0, 2), "provenance": prov,
               "artefacts": {"model.pt": file_record(out_dir / "model.pt")}}
    atomic_write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def evaluate_transfer(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, target: str,
                      out: str | Path) -> dict:
    """Evaluate the model trained on ``dataset`` on every class of ``target`` (cross-dataset transfer,
    domain generalisation); writes the metrics JSON ``out`` with ``dataset=target``."""
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    if cls.inputs == "images":
        from vlprompt.train_images import evaluate_transfer as evaluate_transfer_images

        return evaluate_transfer_images(cfg, dataset, method_name, shots, seed, target, out)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    seed_everything(seed)
    ctx, _, _ = build_context(cfg, dataset, cls, shots, seed, device, for_training=False)
    ctx.template, ctx.dataset = get_dataset(target).template, target  # hand-crafted prompts: the target's
    if cls.reads_unlabelled:  # the target's unlabelled images
        ctx.unlabelled = unlabelled_features(cfg, target)
    method = cls(mcfg, ctx).to(device)
    saved = load_model_state(grid.Run(dataset, method_name, shots, seed).dir(cfg), device)
    method.load_trainable_state(saved["state"])
    target_bank = FeatureBank(grid.features_dir(cfg, target))
    target_classes = read_artefact_json(grid.classes_path(cfg, target))
    rows = target_bank.rows("test")
    metrics = evaluate(method, rows, eval_features(cfg, target_bank, rows, cls, target, shots, trained_on=dataset),
                       target_classes, "all", ctx.classnames, device)
    metrics.update(method=method_name, dataset=target, train_dataset=dataset, shots=shots, seed=seed,
                   protocol=cfg["protocol"], experiment=cfg["experiment"], trained=cls.needs_training,
                   config_hash=method_config_hash(cfg, method_name, dataset, shots),
                   provenance=provenance(**ctx.backbone.provenance(), device=str(device)))
    atomic_write_json(out, metrics)
    return metrics


def run(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, out_dir: str | Path,
        progress: bool = True, stop_after: int | None = None) -> dict:
    """Train and evaluate one run; write ``model.pt`` and ``metrics.json`` into ``out_dir``."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if get_method(method_name).inputs == "images":  # image encoder in the loop: MaPLe, PromptSRC, ...
        from vlprompt.train_images import run as run_on_images

        return run_on_images(cfg, dataset, method_name, shots, seed, out_dir, progress, stop_after)
    device, cls = start_job(cfg, method_name, seed)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    ctx, bank, classes = build_context(cfg, dataset, cls, shots, seed, device)
    backbone, train_names = ctx.backbone, ctx.classnames
    t_load = time.time() - t0
    method = cls(mcfg, ctx).to(device)
    train_info: dict = {}
    ckpt = out_dir / "checkpoint.pt"
    if cls.needs_training and not method.fit(ctx):
        train_info = sgd_loop(method, ctx, mcfg, ckpt, cfg["train"]["checkpoint_every"], progress, stop_after)
        method.after_training(ctx)
    t_train = time.time() - t0 - t_load
    test_rows = bank.rows("test")
    test_features = eval_features(cfg, bank, test_rows, cls, dataset, shots)
    metrics = evaluate(method, test_rows, test_features, classes, cfg["protocol"], train_names, device)
    if cls.needs_training:  # accuracy on the few-shot val split, the only data defaults are chosen on
        metrics.update(validation_metrics(cfg, dataset, shots, seed, method, classes, train_names, device))
    seconds = {"load": round(t_load, 2), "train": round(t_train, 2), "total": round(time.time() - t0, 2)}
    return save_run(cfg, out_dir, metrics, method, mcfg, dataset, shots, seed, train_names, train_info, seconds,
                    provenance(**backbone.provenance(), device=str(device)))


def validation_metrics(cfg: dict, dataset: str, shots: int, seed: int, method, classes: dict,
                       train_names: list[str], device: torch.device) -> dict:
    """The run's metrics on its few-shot validation images (every class: base and new under base2new), each
    key prefixed ``val_``; the method is switched back to its training classes first."""
    try:
        method.set_classes(train_names)
    except NotImplementedError:
        pass
    rows = read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed), cfg["fewshot"].get("allow_fewer", False))["val"]
    stem = grid.fewshot_features(cfg, dataset, shots, seed)
    features = FeatureBank(stem.parent).take(f"{stem.name}.val", [r[0] for r in rows])
    metrics = evaluate(method, rows, features, classes, cfg["protocol"], train_names, device)
    return {f"val_{k}": v for k, v in metrics.items() if not k.endswith("_per_class")}


def save_run(cfg: dict, out_dir: Path, metrics: dict, method, mcfg, dataset: str, shots: int, seed: int,
             train_names: list[str], train_info: dict, seconds: dict, prov: dict) -> dict:
    """Complete a run's metrics with what identifies it, write ``model.pt`` then ``metrics.json`` (each
    atomically: a finished run is one whose metrics.json exists) and drop the training checkpoint."""
    hyperparameters = _asdict(mcfg)
    metrics.update(
        method=method.name, dataset=dataset, train_dataset=dataset, shots=shots, seed=seed,
        protocol=cfg["protocol"], experiment=cfg["experiment"],
        config_hash=method_config_hash(cfg, method.name, dataset, shots), hyperparameters=hyperparameters,
        overrides=method_settings(cfg, method.name, dataset, shots), method_info=method.run_info(),
        trained=method.needs_training, train=train_info, seconds=seconds, provenance=prov)
    atomic_torch_save(out_dir / "model.pt", {"method": method.name, "state": method.trainable_state(),
                                             "hyperparameters": hyperparameters, "classnames": train_names,
                                             "provenance": prov})
    metrics["artefacts"] = {"model.pt": file_record(out_dir / "model.pt")}  # checked by every reader of model.pt
    atomic_write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


def start_job(cfg: dict, method_name: str, seed: int):
    """A job's start: one thread per job (``train.threads``), every generator seeded; returns (device, method class)."""
    torch.set_num_threads(cfg["train"]["threads"])
    seed_everything(seed)
    return pick_device(cfg["train"]["device"]), get_method(method_name)


def _asdict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
