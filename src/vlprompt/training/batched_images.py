"""Several runs of one image-loop deep-prompt method (VPT-deep) on one dataset trained in one computation: per step,
the frozen image tower runs ONCE over the images of every run, each image with its own run's deep prompts.

The counterpart of :mod:`vlprompt.training.batched` (which shares the text tower of feature-bank methods), on the
same lockstep (:func:`~vlprompt.training.batched.make_lane`, :func:`~vlprompt.training.batched.train_lanes`): each
run keeps its own method (prompts), optimiser, gradient scaler, learning-rate schedule, batch order and
augmentation draws (:func:`vlprompt.training.image_runs.image_batches`, from its (seed, epoch) as a run alone),
checkpoint, ``model.pt`` and ``metrics.json``; evaluation stays per run (:func:`image_runs.finish`). One step:

1. every run's ``loss`` is evaluated with its method's ``image_intercept`` set: the call to the image tower
   records the images and the run's deep prompts and stops that loss (nothing costly comes before it);
2. the recorded calls, grouped by image and prompt shape, go through the tower in one pass: the images
   concatenated along the batch, (ΣB, 3, H, W), and block j's prompts as per-row tokens (ΣB, n, width), run r's
   P_j repeated over its B_r rows (:func:`vlprompt.clip.deep_prompts.vision_prompts` takes such per-row prompts);
   the output is split back by run;
3. the losses are evaluated again, the intercept returning each run's rows;
4. one backward over the sum of the losses: the runs' prompts are disjoint, so each gets its own gradient; then
   each run's optimiser and scaler step.

Why concatenation with per-row prompts, not ``torch.func.functional_call`` + ``vmap`` over stacked prompts: the
prompts enter open_clip's tower through the same forward hooks a run alone uses (one place that knows open_clip's
internals, guarded by ``tests/test_deep_prompts.py``), the batch is one ordinary batch for every kernel (the
fused attention paths that ``vmap`` may not support, no per-lane loop inside), and the cost is one (ΣB, n, width)
tensor per prompted block.

Same arithmetic per run as a run alone: a ViT treats each image of a batch on its own (the patch convolution,
per-token layer norms and matrix products, attention within one image's tokens; no batch statistics), so a run's
features differ from its single-run values only in the order of the floating-point sums inside a matrix product
or convolution, which a batch of ΣB images may block differently than B. A run's prompt gradient is the sum of
its rows' gradients, as the expanded prompts of a run alone give it. ``tests/test_batched_images.py`` compares
metrics.json (accuracies equal, losses within rtol 1e-5) and model.pt (rtol 1e-5) with single runs, checks that
each run matches its own single run and not another's, and that a killed batched job resumes to the same result.

Which methods: those whose own class declares ``batchable`` (:func:`vlprompt.training.batched.can_batch`) and
reach the image tower only through ``VPTDeep.image_features`` with the prompts of ``vision_prompts()`` (VPT-deep).
IVLP, MaPLe, PromptSRC, ... (text-side prompts, several tower calls, randomness) train one run after the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlprompt.clip import deep_prompts
from vlprompt.training import batched, image_runs
from vlprompt.training.image_runs import PreparedImageRun


def per_row_prompts(calls: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> list[torch.Tensor]:
    """The deep prompts of the concatenated batch of ``calls`` ((images (B_r, 3, H, W), prompts [(n, width)] * J)
    per run): block j's (ΣB_r, n, width), run r's P_j on its B_r rows."""
    depth = len(calls[0][1])
    return [torch.cat([p[j].unsqueeze(0).expand(len(x), -1, -1) for x, p in calls]) for j in range(depth)]


def shared_image_pass(lanes: list[batched._Lane], model) -> None:
    """Run the pending ``(images, prompts)`` calls of ``lanes`` through the prompted image tower of ``model`` once
    per (image shape, dtype, prompt shapes) and hand each lane its rows."""
    groups: dict[tuple, list[batched._Lane]] = {}
    for lane in lanes:
        assert lane.pending is not None, "a lane without a recorded call"
        images, prompts = lane.pending
        key = (tuple(images.shape[1:]), images.dtype, tuple(tuple(p.shape) for p in prompts))
        groups.setdefault(key, []).append(lane)
    for group in groups.values():
        calls = [lane.pending for lane in group if lane.pending is not None]
        images = torch.cat([x for x, _ in calls])  # (ΣB, 3, H, W)
        out = deep_prompts.encode_image(model, images, per_row_prompts(calls))  # (ΣB, D)
        for lane, rows in zip(group, out.split([len(x) for x, _ in calls]), strict=True):
            lane.outputs.append(rows)
            lane.pending = None


def train_together(runs: list[PreparedImageRun], checkpoint_every: int, stop_after: int | None = None) -> list[dict]:
    """Train ``runs`` (prepared by :func:`image_runs.prepare`, all needing the SGD loop, one batchable method on
    one backbone) in lockstep; resumable, each from its own checkpoint. Returns each run's train info, as
    :func:`image_runs.image_loop` does (``epoch_seconds``: each epoch's wall time shared by its runs)."""
    model = runs[0].ctx.backbone.model
    if any(r.ctx.backbone.model is not model for r in runs):
        raise RuntimeError("runs trained together must share one backbone; train them one after the other")
    lanes = []
    for r in runs:
        lanes.append(batched.make_lane(r, len(r.rows), r.batches()))
        method: Any = r.method  # a batchable image-loop method: VPTDeep.image_features reads image_intercept
        method.image_intercept = lanes[-1].intercept
    try:
        batched.train_lanes(lanes, checkpoint_every, stop_after, lambda stopped: shared_image_pass(stopped, model))
    finally:
        for r in runs:
            method = r.method
            method.image_intercept = None
    batched.end_training(lanes)
    return [
        {
            "loss_history": lane.history,
            "steps_per_epoch": lane.steps,
            "epoch_seconds": lane.seconds,
            "curves": lane.curves,
        }
        for lane in lanes
    ]


def run_group(
    cfg: dict,
    dataset: str,
    method_name: str,
    runs: list[tuple[int, int, Path]],
    stop_after: int | None = None,
) -> list[dict]:
    """Train and evaluate the (shots, seed, run directory) ``runs`` of a batchable image-loop method together;
    each run's ``model.pt`` and ``metrics.json`` as :func:`image_runs.run` writes them (``seconds.train``: its
    share of the shared training)."""
    return batched.train_group(cfg, dataset, method_name, runs, stop_after, image_runs, train_together)
