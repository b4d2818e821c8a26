"""A run, whatever the method reads: dispatches to :mod:`feature_runs` (cached feature bank) or :mod:`image_runs`
(image encoder in the loop) by the method's ``inputs``, and trains several runs in one process."""

from __future__ import annotations

import logging
from pathlib import Path

from vlprompt.experiment import grid
from vlprompt.methods import get_method
from vlprompt.training import batched, batched_images, feature_runs, image_runs
from vlprompt.training.records import is_complete

log = logging.getLogger(__name__)


def _runner(method_name: str):
    return image_runs if get_method(method_name).inputs == "images" else feature_runs


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
    """Train and evaluate one run; write ``model.pt`` and ``metrics.json`` into ``out_dir``."""
    return _runner(method_name).run(cfg, dataset, method_name, shots, seed, out_dir, progress, stop_after)


def evaluate_transfer(
    cfg: dict, dataset: str, method_name: str, shots: int, seed: int, target: str, out: str | Path
) -> dict:
    """Evaluate the model trained on ``dataset`` on every class of ``target``; writes the metrics JSON ``out``."""
    return _runner(method_name).evaluate_transfer(cfg, dataset, method_name, shots, seed, target, out)


def run_many(cfg: dict, dataset: str, method_name: str, runs: list[tuple[int, int]], progress: bool = True):
    """Train several (shots, seed) runs of one method on one dataset in this process, each into its own
    run directory, skipping runs that are already complete. Saves the per-process start-up cost
    (importing torch and open_clip, loading the backbone), which dominates on small CPU jobs. With
    ``train.batch_seeds`` and a batchable method (:func:`batched.can_batch`), the runs train in one computation
    (:mod:`batched` for feature-bank methods, :mod:`batched_images` for image-loop ones)."""
    todo = []
    for shots, seed in runs:
        run_dir = grid.Run(dataset, method_name, shots, seed).dir(cfg)
        if is_complete(cfg, run_dir, method_name, dataset, shots):
            log.info("%s is complete, skipping", run_dir)
            continue
        todo.append((shots, seed, run_dir))
    cls = get_method(method_name)
    if len(todo) > 1 and cfg["train"].get("batch_seeds", False) and batched.can_batch(cls):
        return (batched_images if cls.inputs == "images" else batched).run_group(cfg, dataset, method_name, todo)
    return [run(cfg, dataset, method_name, shots, seed, run_dir, progress) for shots, seed, run_dir in todo]
