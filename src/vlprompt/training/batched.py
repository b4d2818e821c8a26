"""Several runs of one feature-bank method on one dataset trained in one computation: per step, the frozen text
tower runs ONCE over the prompts of every run (the seeds of a ``train.job_granularity: shots`` job; runs whose
shots or epochs differ also work).

Each run keeps what it has when it trains alone in :func:`vlprompt.training.loop.train_loop`: its own method
(parameters), optimiser, gradient scaler, learning-rate schedule, batches drawn from its (seed, epoch) generator,
checkpoint, ``model.pt`` and ``metrics.json``. The runs advance in lockstep; one step is

1. every run's ``loss`` is evaluated with its context's text encoder intercepted: a call to the tower whose
   result is not there yet records the prompt embeddings and stops that loss (what a loss computes before the
   tower is cheap: assembling the prompts, CoCoOp's meta-net);
2. the recorded prompts of all runs go through the tower in one pass (grouped by shape), the output split back;
3. the losses are evaluated again, the encoder returning each run's rows of the shared output, for as many
   calls as a loss makes (CoCoOp's chunks), until every loss completes;
4. one backward over the sum of the runs' (scaled) losses: their parameters are disjoint, so each parameter's
   gradient is its own run's; then each run's gradient hook (ProGrad), optimiser and scaler step.

Same arithmetic per run as a run alone: the tower acts on each prompt row independently (causal attention
within a row, row-wise layer norms and matrix products), so a run's features and gradients differ from its
single-run values only in the order of the floating-point sums inside a matrix product, which a larger batch may
block differently. ``tests/test_batched.py`` compares metrics.json (accuracies equal, losses within rtol 1e-5) and
model.pt (rtol 1e-5) with single runs, and a killed batched job's resumption with an uninterrupted one.

A method batches when its class itself (not only a parent) sets ``batchable = True`` (:func:`can_batch`): its
``loss`` and evaluation draw no global randomness (a run alone seeds the global generator per epoch; runs in
lockstep share it) and it calls the text tower through its context's ``PromptedTextEncoder``. Other methods
train one run after the other, as before.

The lockstep itself (:func:`make_lane`, :func:`train_lanes`, :func:`end_training`) does not know which tower is
shared: :mod:`vlprompt.training.batched_images` drives it for an image-loop method (VPT-deep), whose runs share
one pass of the prompted image tower instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vlprompt.training import feature_runs
from vlprompt.training.feature_runs import PreparedRun
from vlprompt.training.loop import (
    epoch_seed,
    load_checkpoint,
    loop_setup,
    lr_at,
    save_checkpoint,
)

log = logging.getLogger(__name__)


def can_batch(cls) -> bool:
    """Whether runs of method class ``cls`` can train in one computation: a method whose own class declares
    ``batchable`` (a subclass that adds randomness to its loss must not inherit its parent's word); feature-bank
    methods train here, image-loop methods in :mod:`vlprompt.training.batched_images`."""
    return cls.inputs in ("features", "images") and bool(cls.__dict__.get("batchable", False))


class _Recorded(BaseException):  # noqa: N818  (a signal, not an error; BaseException so that no loss swallows it)
    """A loss stopped at a text-tower call whose result is not computed yet."""


@dataclasses.dataclass
class _Lane:
    """One run in the lockstep: its prepared run and its own optimisation state."""

    run: Any  # a feature_runs.PreparedRun or an image_runs.PreparedImageRun
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps: int
    start: int
    history: list
    seconds: list
    curves: list = dataclasses.field(default_factory=list)  # per epoch: mean loss, lr, each loss term (train_loop's)
    batches: Iterator = iter(())
    total: float = 0.0
    terms: dict = dataclasses.field(default_factory=dict)  # the method's loss terms summed over the epoch's steps
    outputs: list = dataclasses.field(default_factory=list)  # this step's tower results, in call order
    calls: int = 0
    pending: tuple | None = None  # the arguments of the call that stopped the loss: (x, eot, trim) for the text tower
    batches_of: Callable | None = None  # the run's batches(epoch, generator, steps)

    @property
    def method(self):
        return self.run.method

    def intercept(self, *args) -> torch.Tensor:
        k = self.calls
        self.calls += 1
        if k < len(self.outputs):
            return self.outputs[k]
        self.pending = args
        raise _Recorded


def shared_tower_pass(lanes: list[_Lane], tower) -> None:
    """Run the pending calls of ``lanes`` through ``tower`` once per (shape, dtype, trim) and hand each lane
    its rows."""
    groups: dict[tuple, list[tuple[_Lane, tuple]]] = {}
    for lane in lanes:
        assert lane.pending is not None, "a lane without a recorded call"
        x, _, trim = lane.pending
        groups.setdefault((tuple(x.shape[1:]), x.dtype, trim), []).append((lane, lane.pending))
    for (_, _, trim), group in groups.items():
        out = tower(torch.cat([call[0] for _, call in group]), torch.cat([call[1] for _, call in group]), trim)
        for (lane, _), rows in zip(group, out.split([len(call[0]) for _, call in group]), strict=True):
            lane.outputs.append(rows)
            lane.pending = None


def step_losses(
    lanes: list[_Lane], inputs: dict[int, tuple], shared_pass: Callable[[list[_Lane]], None]
) -> dict[int, torch.Tensor]:
    """Every lane's loss on its batch ``inputs[i] = (x, y)``, the shared tower run once per round of calls
    (``shared_pass(stopped lanes)``, e.g. :func:`shared_tower_pass`); each lane's loss terms (the parts its
    ``loss`` reports) are added to its epoch's sums."""
    losses: dict[int, torch.Tensor] = {}
    for lane in lanes:
        lane.outputs = []
    todo = list(range(len(lanes)))
    while todo:
        stopped = []
        for i in todo:
            lane = lanes[i]
            lane.calls, lane.pending = 0, None
            try:
                losses[i], parts = lane.method.loss(*inputs[i])
                for key, value in parts.items():
                    if isinstance(value, (int, float)):
                        lane.terms[key] = lane.terms.get(key, 0.0) + float(value)
            except _Recorded:
                stopped.append(i)
        if stopped:
            shared_pass([lanes[i] for i in stopped])
        todo = stopped
    return losses


def make_lane(run, n: int, batches_of: Callable) -> _Lane:
    """A lane for ``run`` (its ``method``, ``mcfg``, ``ctx``, ``seed`` and ``checkpoint``) on ``n`` training
    examples drawn by ``batches_of(epoch, generator, steps)``: optimiser, scaler and steps as
    :func:`~vlprompt.training.loop.train_loop` sets them up, resumed from the run's checkpoint if there is one."""
    device = run.ctx.device
    opt, scaler, steps = loop_setup(run.method, run.mcfg, device, n)
    start, history, seconds, curves = load_checkpoint(run.checkpoint, run.method, opt, scaler, device)
    run.method.train()
    return _Lane(run, opt, scaler, steps, start, history, seconds, curves, batches_of=batches_of)


def train_lanes(
    lanes: list[_Lane], checkpoint_every: int, stop_after: int | None, shared_pass: Callable[[list[_Lane]], None]
) -> None:
    """Every lane's remaining epochs in lockstep, each checkpointed as a run alone checkpoints; the lanes'
    intercepts must be installed (the caller removes them after, also on an interruption)."""
    device = lanes[0].run.ctx.device
    for epoch in range(min(lane.start for lane in lanes), max(lane.run.mcfg.epochs for lane in lanes)):
        active = [lane for lane in lanes if lane.start <= epoch < lane.run.mcfg.epochs]
        train_epoch(active, epoch, device, shared_pass)
        for lane in active:
            done = epoch + 1
            if done % checkpoint_every == 0 and done < lane.run.mcfg.epochs:
                save_checkpoint(
                    lane.run.checkpoint,
                    lane.method,
                    lane.opt,
                    lane.scaler,
                    done,
                    lane.history,
                    lane.seconds,
                    lane.curves,
                )
        if stop_after is not None and epoch + 1 >= stop_after:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (stop_after)")


def end_training(lanes: list[_Lane]) -> None:
    """What a run alone does after its last epoch: the method's ``train_end``, then evaluation mode."""
    for lane in lanes:
        train_end = getattr(lane.method, "train_end", None)
        if train_end is not None:
            train_end()
        lane.method.eval()


def train_together(runs: list[PreparedRun], checkpoint_every: int, stop_after: int | None = None) -> list[dict]:
    """Train ``runs`` (prepared by :func:`feature_runs.prepare`, all needing the SGD loop, one method on one
    backbone) in lockstep; resumable, each from its own checkpoint. Returns each run's train info, as
    :func:`feature_runs.feature_loop` does."""
    lanes = []
    for r in runs:
        lanes.append(make_lane(r, r.ctx.training_data()[0].shape[1], feature_runs.feature_batches(r.ctx, r.mcfg)))
        r.ctx.encoder.intercept = lanes[-1].intercept
    tower = runs[0].ctx.encoder.tower  # the frozen modules every run's encoder wraps (one backbone per process)
    try:
        train_lanes(lanes, checkpoint_every, stop_after, lambda stopped: shared_tower_pass(stopped, tower))
    finally:
        for r in runs:
            r.ctx.encoder.intercept = None
    end_training(lanes)
    return [{"loss_history": lane.history, "steps_per_epoch": lane.steps, "curves": lane.curves} for lane in lanes]


def train_epoch(
    active: list[_Lane], epoch: int, device: torch.device, shared_pass: Callable[[list[_Lane]], None]
) -> None:
    """One epoch of every lane in ``active``: each draws its batches from its own (seed, epoch) generator."""
    t0 = time.time()
    for lane in active:
        cfg = lane.run.mcfg
        for group in lane.opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        torch.manual_seed(epoch_seed(lane.run.seed, epoch))  # as a run alone (batchable losses draw nothing from it)
        gen = torch.Generator().manual_seed(epoch_seed(lane.run.seed, epoch))
        assert lane.batches_of is not None, "a lane without its batches"
        lane.batches = iter(lane.batches_of(epoch, gen, lane.steps))
        lane.total, lane.terms = 0.0, {}
    for step in range(max(lane.steps for lane in active)):
        stepping = [lane for lane in active if step < lane.steps]
        inputs = {i: next(lane.batches) for i, lane in enumerate(stepping)}
        for lane in stepping:
            if lane.run.mcfg.lr_schedule == "step":
                for group in lane.opt.param_groups:
                    group["lr"] = lr_at(lane.run.mcfg, epoch, step, lane.steps)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            losses = step_losses(stepping, inputs, shared_pass)
        for lane in stepping:
            lane.opt.zero_grad(set_to_none=True)
        torch.stack([lane.scaler.scale(losses[i]).float() for i, lane in enumerate(stepping)]).sum().backward()
        for i, lane in enumerate(stepping):
            adjust_gradients = getattr(lane.method, "adjust_gradients", None)
            if adjust_gradients is not None:
                lane.scaler.unscale_(lane.opt)
                adjust_gradients(*inputs[i])
            lane.scaler.step(lane.opt)
            lane.scaler.update()
            lane.total += losses[i].item()
    seconds = round((time.time() - t0) / len(active), 3)  # the epoch's wall time, shared by its runs
    for lane in active:
        epoch_end = getattr(lane.method, "epoch_end", None)
        if epoch_end is not None:
            epoch_end(epoch)
        lane.history.append(lane.total / lane.steps)
        lane.seconds.append(seconds)
        row = {"epoch": epoch + 1, "loss": lane.history[-1], "lr": lane.opt.param_groups[0]["lr"]}
        lane.curves.append(row | {key: value / lane.steps for key, value in lane.terms.items() if key not in row})


def train_group(cfg: dict, dataset: str, method_name: str, runs: list, stop_after: int | None, runner, train) -> list:
    """Prepare the (shots, seed, run directory) ``runs`` with ``runner.prepare``, train those that train together
    with ``train(prepared, checkpoint_every, stop_after)``, and finish each with ``runner.finish`` (its
    ``seconds.train``: its share of the shared training). ``runner``: :mod:`~vlprompt.training.feature_runs` or
    :mod:`~vlprompt.training.image_runs`."""
    prepared = [runner.prepare(cfg, dataset, method_name, shots, seed, out) for shots, seed, out in runs]
    training = [p for p in prepared if p.trains]
    t0 = time.time()
    infos = train(training, cfg["train"]["checkpoint_every"], stop_after) if training else []
    share = (time.time() - t0) / max(len(training), 1)
    info_of = {id(p): info for p, info in zip(training, infos, strict=True)}
    out = [runner.finish(p, info_of.get(id(p), {}), share if id(p) in info_of else None) for p in prepared]
    log.info("trained %d runs of %s on %s together", len(training), method_name, dataset)
    return out


def run_group(
    cfg: dict,
    dataset: str,
    method_name: str,
    runs: list[tuple[int, int, Path]],
    stop_after: int | None = None,
) -> list[dict]:
    """Train and evaluate the (shots, seed, run directory) ``runs`` of a batchable method together; each run's
    ``model.pt`` and ``metrics.json`` as :func:`feature_runs.run` writes them (``seconds.train``: its share of
    the shared training)."""
    return train_group(cfg, dataset, method_name, runs, stop_after, feature_runs, train_together)
