"""Training and evaluation for methods with the image encoder in the loop (``inputs = "images"``).

The same run as :func:`vlprompt.train.run` (one method × dataset × shots × seed, same outputs and
metrics), but reading images instead of the feature bank: the few-shot training images of the
training classes with CoOp's augmentation (random resized crop + flip), the test images with the
backbone's test transform. The optimisation is :func:`vlprompt.train.sgd_loop`'s (SGD/AdamW, constant
warm-up then cosine per epoch, fp16 autocast on CUDA, checkpoint every few epochs); the batch order
and every image's augmentation in epoch e are drawn from (seed, e), so a resumed run continues
exactly as an uninterrupted one. Methods may define ``epoch_end(epoch)`` and ``train_end()``
(PromptSRC's prompt aggregation) and ``loop_state()``/``load_loop_state()`` for what the
checkpoint must carry besides the trainable parameters.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from vlprompt import grid
from vlprompt.backbone import PromptedTextEncoder
from vlprompt.config import method_config_hash, method_settings
from vlprompt.data import registry, splits
from vlprompt.data.splits import subsample_classes
from vlprompt.evaluate import evaluate_parts
from vlprompt.features import ImageList, pick_device, train_transform
from vlprompt.io import atomic_path, atomic_write_json, provenance, read_artefact_json
from vlprompt.methods import MethodContext, TrainConfig, get_method
from vlprompt.train import _cached_backbone, load_model_state, loop_setup, lr_at, save_run, seed_everything

log = logging.getLogger(__name__)


def _epoch_view(seed: int, epoch: int) -> int:
    """The augmentation stream of an epoch (ImageList seeds each image from (view, relpath))."""
    return 1_000_000 + seed * 100_003 + epoch


def image_loop(method, ctx: MethodContext, cfg: TrainConfig, root: Path, rows: list, transform,
               ckpt_path: Path, checkpoint_every: int, workers: int = 0, progress: bool = True,
               stop_after: int | None = None) -> dict:
    """Train ``method`` on the images ``rows`` ([relpath, label, name], labels of the training classes)."""
    from tqdm import tqdm

    device = ctx.device
    relpaths, labels = [r[0] for r in rows], torch.tensor([r[1] for r in rows])
    n = len(rows)
    opt, scaler, steps = loop_setup(method, cfg, device, n)
    start, history, seconds = 0, [], []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        method.load_trainable_state(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if hasattr(method, "load_loop_state"):
            method.load_loop_state(state["loop"])
        start, history, seconds = state["epoch"], state["history"], state.get("seconds", [])
        log.info("resuming %s from epoch %d", ckpt_path, start)
    method.train()
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=f"train {method.name}",
               disable=not progress, unit="epoch")
    for epoch in bar:
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        torch.manual_seed(ctx.seed * 1_000_003 + epoch)  # the whole epoch's randomness, resumable
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        batches = [order[(s * cfg.batch_size) % n:][: cfg.batch_size].tolist() for s in range(steps)]
        images = ImageList(root, relpaths, transform, view=_epoch_view(ctx.seed, epoch))
        loader = torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        total = 0.0
        for idx, x in zip(batches, loader, strict=True):
            x, y = x.to(device, non_blocking=True), labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss, _ = method.loss(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item()
        if hasattr(method, "epoch_end"):
            method.epoch_end(epoch)
        history.append(total / steps)
        seconds.append(round(time.time() - t0, 3))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        done = epoch + 1
        if done % checkpoint_every == 0 and done < cfg.epochs:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"model": method.trainable_state(), "optimizer": opt.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": done, "history": history, "seconds": seconds,
                            "loop": method.loop_state() if hasattr(method, "loop_state") else None}, tmp)
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after epoch {done} (stop_after)")
    if hasattr(method, "train_end"):
        method.train_end()
    method.eval()
    return {"loss_history": history, "steps_per_epoch": steps, "epoch_seconds": seconds}


def evaluate_images(method, test_rows: list, root: Path, transform, classes: dict, protocol: str,
                    trained_on: list[str], device: torch.device, batch_size: int = 256,
                    workers: int = 0) -> dict:
    """:func:`vlprompt.evaluate.evaluate` on images: the same parts, closed sets and metrics."""

    @torch.no_grad()
    def predict(rows: list) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ImageList(root, [r[0] for r in rows], transform),
                                             batch_size=batch_size, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        preds = []
        for x in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                preds.append(method(x.to(device, non_blocking=True)).argmax(-1).cpu())
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    return evaluate_parts(method, test_rows, classes, protocol, trained_on, predict)


def run(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, out_dir: str | Path,
        progress: bool = True, stop_after: int | None = None) -> dict:
    """Train and evaluate one run of an image-input method; write ``model.pt`` and ``metrics.json``."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg["train"]["threads"])
    seed_everything(seed)
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    backbone = _cached_backbone(cfg, device)
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    names = classes["classnames"]
    train_labels = classes["base"] if cfg["protocol"] == "base2new" else list(range(len(names)))
    train_names = [names[i] for i in train_labels]
    ctx = MethodContext(backbone=backbone, encoder=PromptedTextEncoder(backbone.model), classnames=train_names,
                        template=registry.get_dataset(dataset).template, device=device, seed=seed,
                        dataset=dataset)
    root = registry.dataset_dir(cfg, dataset)
    fcfg = cfg["features"]
    t_load = time.time() - t0
    method = cls(mcfg, ctx).to(device)
    train_info: dict = {}
    ckpt = out_dir / "checkpoint.pt"
    if cls.needs_training:
        fewshot = splits.read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed),
                                      cfg["fewshot"].get("allow_fewer", False))
        rows = subsample_classes(fewshot["train"], train_labels)
        model = backbone.model
        transform = train_transform(backbone.image_size, model.visual.image_mean, model.visual.image_std,
                                    fcfg["crop_scale_min"])
        train_info = image_loop(method, ctx, mcfg, root, rows, transform, ckpt, cfg["train"]["checkpoint_every"],
                                fcfg["workers"], progress, stop_after)
    t_train = time.time() - t0 - t_load
    test_rows = splits.read_split(registry.split_path(cfg, dataset))["test"]
    metrics = evaluate_images(method, test_rows, root, backbone.preprocess, classes, cfg["protocol"], train_names,
                              device, fcfg["batch_size"], fcfg["workers"])
    seconds = {"load": round(t_load, 2), "train": round(t_train, 2), "total": round(time.time() - t0, 2)}
    return save_run(cfg, out_dir, metrics, method, mcfg, dataset, shots, seed, train_names, train_info, seconds,
                    provenance(**backbone.provenance(), device=str(device)))


def evaluate_transfer(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, target: str,
                      out: str | Path) -> dict:
    """The image variant of :func:`vlprompt.train.evaluate_transfer`: the model trained on ``dataset``
    evaluated on every class of ``target`` (cross-dataset, domain generalisation); writes ``out``."""
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    seed_everything(seed)
    backbone = _cached_backbone(cfg, device)
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    names = classes["classnames"]
    train_names = [names[i] for i in (classes["base"] if cfg["protocol"] == "base2new" else range(len(names)))]
    # hand-crafted prompts (VPT's, depth 0) are the target's, as the references build the model for the target
    ctx = MethodContext(backbone=backbone, encoder=PromptedTextEncoder(backbone.model), classnames=train_names,
                        template=registry.get_dataset(target).template, device=device, seed=seed, dataset=target)
    method = cls(mcfg, ctx).to(device)
    saved = load_model_state(grid.Run(dataset, method_name, shots, seed).dir(cfg), device)
    method.load_trainable_state(saved["state"])
    target_classes = read_artefact_json(grid.classes_path(cfg, target))
    test_rows = splits.read_split(registry.split_path(cfg, target))["test"]
    fcfg = cfg["features"]
    metrics = evaluate_images(method, test_rows, registry.dataset_dir(cfg, target), backbone.preprocess,
                              target_classes, "all", train_names, device, fcfg["batch_size"], fcfg["workers"])
    metrics.update(method=method_name, dataset=target, train_dataset=dataset, shots=shots, seed=seed,
                   protocol=cfg["protocol"], experiment=cfg["experiment"], trained=cls.needs_training,
                   config_hash=method_config_hash(cfg, method_name, dataset, shots),
                   provenance=provenance(**backbone.provenance(), device=str(device)))
    atomic_write_json(out, metrics)
    return metrics
