"""The training loop every gradient-trained method shares (feature-bank and image-loop runs alike).

SGD or AdamW over the method's trainable parameters, constant warm-up then cosine annealing (per epoch, as Dassl,
or per step), fp16 autocast with a gradient scaler on CUDA, a progress bar, a checkpoint every few epochs and
resumption from it after a kill. All randomness of epoch e is seeded from (seed, e) before the epoch's batches are
drawn, so a resumed run continues exactly as an uninterrupted one and ends with identical parameters.

The runners differ only in where a batch comes from: they pass ``batches(epoch, generator, steps)``, which yields
``(x, y)`` already on the device (features of random augmented views, or freshly augmented images).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from vlprompt.io import atomic_torch_save
from vlprompt.methods import Method, TrainConfig

log = logging.getLogger(__name__)

Batches = Callable[[int, torch.Generator, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s randomness (batch order, views, dropout): resumable."""
    return seed * 1_000_003 + epoch


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
    if cfg.optimizer == "adam":  # Dassl's "adam": L2 weight decay added to the gradient (not decoupled)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adamw or adam")


def loop_setup(method: Method, cfg: TrainConfig, device: torch.device, n: int):
    """Optimizer over the method's trainable parameters, fp16 grad scaler (CUDA only) and steps per epoch
    for ``n`` training images (Dassl: N // batch size, at least one; ``drop_last=False``: ceil(N / batch))."""
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} has nothing to train")
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    steps = max(
        cfg.min_steps_per_epoch,
        n // cfg.batch_size if n >= cfg.batch_size else 1,
        0 if cfg.drop_last else math.ceil(n / cfg.batch_size),
    )
    return make_optimizer(cfg, params), scaler, steps


def batch_indices(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """Step ``step``'s indices into the shuffled ``order``, wrapping around when steps × batch exceeds N."""
    n = len(order)
    return order[(step * batch_size) % n :][:batch_size]


def train_loop(
    method: Method,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    n: int,
    batches: Batches,
    ckpt_path: Path,
    checkpoint_every: int,
    progress: bool = True,
    stop_after: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``method`` for ``cfg.epochs`` on ``n`` training examples drawn by ``batches``; resumable from
    ``ckpt_path``. Hooks a method may define: ``adjust_gradients(x, y)`` after the backward (ProGrad's gradient
    surgery, MoCoOp's clipping; gradients unscaled first), ``epoch_end(epoch)`` and ``train_end()`` (PromptSRC's
    prompt aggregation), ``loop_state()``/``load_loop_state()`` for what the checkpoint must carry besides the
    trainable parameters.

    Returns the per-epoch mean loss (``loss_history``), ``steps_per_epoch``, each epoch's wall seconds and its
    ``curves``: per epoch, the mean loss, the mean of each term the method's ``loss`` reports in its parts, and
    the learning rate (of the epoch's last step), the row also passed to ``on_epoch`` (a live logger)."""
    from tqdm import tqdm

    opt, scaler, steps = loop_setup(method, cfg, device, n)
    start, history, seconds, curves = load_checkpoint(ckpt_path, method, opt, scaler, device)
    method.train()
    bar = tqdm(
        range(start, cfg.epochs),
        initial=start,
        total=cfg.epochs,
        desc=f"train {method.name}",
        disable=not progress,
        unit="epoch",
    )
    for epoch in bar:
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        torch.manual_seed(epoch_seed(seed, epoch))  # the whole epoch's randomness, resumable
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        total = 0.0
        terms: dict[str, float] = {}  # the method's loss terms summed over the epoch's steps
        for step, (x, y) in enumerate(batches(epoch, gen, steps)):
            if cfg.lr_schedule == "step":
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, epoch, step, steps)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss, parts = method.loss(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            adjust_gradients = getattr(method, "adjust_gradients", None)
            if adjust_gradients is not None:
                scaler.unscale_(opt)
                adjust_gradients(x, y)
            scaler.step(opt)
            scaler.update()
            total += loss.item()
            for key, value in parts.items():
                if isinstance(value, (int, float)):
                    terms[key] = terms.get(key, 0.0) + float(value)
        epoch_end = getattr(method, "epoch_end", None)
        if epoch_end is not None:
            epoch_end(epoch)
        history.append(total / steps)
        seconds.append(round(time.time() - t0, 3))
        row = {"epoch": epoch + 1, "loss": history[-1], "lr": opt.param_groups[0]["lr"]}
        curves.append(row | {key: value / steps for key, value in terms.items() if key not in row})
        if on_epoch is not None:
            on_epoch(curves[-1])
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        done = epoch + 1
        if done % checkpoint_every == 0 and done < cfg.epochs:
            save_checkpoint(ckpt_path, method, opt, scaler, done, history, seconds, curves)
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after epoch {done} (stop_after)")
    train_end = getattr(method, "train_end", None)
    if train_end is not None:
        train_end()
    method.eval()
    return {"loss_history": history, "steps_per_epoch": steps, "epoch_seconds": seconds, "curves": curves}


def save_checkpoint(
    path: Path, method: Method, opt, scaler, done: int, history: list, seconds: list, curves: list | None = None
) -> None:
    """The checkpoint :func:`train_loop` writes after epoch ``done`` (the same keys, so either trainer resumes it)."""
    loop_state = getattr(method, "loop_state", None)
    atomic_torch_save(  # through a buffer: its bytes are checked against the free space before writing
        path,
        {
            "model": method.trainable_state(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": done,
            "history": history,
            "seconds": seconds,
            "curves": curves or [],
            "loop": loop_state() if loop_state is not None else None,
        },
    )


def load_checkpoint(path: Path, method: Method, opt, scaler, device: torch.device) -> tuple[int, list, list, list]:
    """Restore a checkpoint of :func:`train_loop` (or :func:`save_checkpoint`) into the method, optimiser and
    scaler; returns (epochs done, loss history, epoch seconds, curves), (0, [], [], []) when there is none."""
    if not path.exists():
        return 0, [], [], []
    state = torch.load(path, map_location=device, weights_only=False)
    method.load_trainable_state(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    load_loop_state = getattr(method, "load_loop_state", None)
    if load_loop_state is not None and state.get("loop") is not None:
        load_loop_state(state["loop"])
    log.info("resuming %s from epoch %d", path, state["epoch"])
    return state["epoch"], state["history"], state.get("seconds", []), state.get("curves", [])
