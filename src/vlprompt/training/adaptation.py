"""Runs of the domain_adaptation protocol: one method × (source, target) pair × shots × seed.

Unsupervised domain adaptation as the UDA papers set it (Office-Home, VisDA, DomainNet): the source dataset's
images with their labels (here its few-shot subset; a full source is ``shots`` above every class's size with
``fewshot.allow_fewer``), the target dataset's training split without labels, and the accuracy on the target's
test split. Both datasets have the same classes.

What the method sees during training is what a run on the source sees (:func:`vlprompt.training.context.build_context`)
except its unlabelled images: for a method that declares ``reads_unlabelled`` they are the *target's* training split
as an (N, D) array (:class:`vlprompt.clip.bank_splits.UnlabelledFeatures`, which never hands out the bank's rows,
where the labels are). Source-only methods (zero-shot CLIP, CoOp) ignore the target until they are tested on it.

The model is then tested as a transfer evaluation tests it (:func:`feature_runs.target_model`): rebuilt with the
target's hand-crafted template, its learned state loaded, on every test image of the target. The validation
accuracy a run records is the source's (its few-shot validation images): UDA has no target label to choose
anything on. ``model.pt`` and ``metrics.json`` go to ``grid.ADAPT``; the metrics' ``dataset`` is the pair
(``grid.pair_label``), ``train_dataset`` the source, ``target`` the target.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlprompt.experiment import grid
from vlprompt.experiment.config import ConfigError, method_settings
from vlprompt.io import provenance, read_artefact_json
from vlprompt.training.context import build_context, start_job, unlabelled_features
from vlprompt.training.feature_runs import feature_loop, target_metrics, target_model, validation_metrics
from vlprompt.training.loggers import live_logger
from vlprompt.training.records import save_run


def same_classes(cfg: dict, source: str, target: str) -> list[str]:
    """The pair's class names; a ConfigError naming both datasets when they differ."""
    names = read_artefact_json(grid.classes_path(cfg, source))["classnames"]
    other = read_artefact_json(grid.classes_path(cfg, target))["classnames"]
    if names != other:
        extra = sorted(set(names) ^ set(other))[:3]
        raise ConfigError(
            f"pairs: {source} and {target} do not have the same classes ({len(names)} and {len(other)}; "
            f"differing e.g. {extra or 'in order'}); pair datasets whose classes are the same"
        )
    return names


def run_adaptation(
    cfg: dict,
    source: str,
    target: str,
    method_name: str,
    shots: int,
    seed: int,
    out_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train ``method_name`` on ``source`` (labelled) with ``target``'s unlabelled training split, test it on the
    target's test split; write ``model.pt`` and ``metrics.json`` into ``out_dir``."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    same_classes(cfg, source, target)
    device, cls = start_job(cfg, method_name, seed)
    if cls.inputs != "features":
        raise ConfigError(f"{method_name} trains with the image encoder in the loop; domain_adaptation does not run it")
    mcfg = cls.make_config(method_settings(cfg, method_name, source, shots))
    ctx, _, classes = build_context(cfg, source, cls, shots, seed, device)
    if cls.reads_unlabelled:
        ctx.unlabelled = unlabelled_features(cfg, target, cls)  # the target's training split: features, no label
    method = cls(mcfg, ctx).to(device)
    t_load = time.time() - t0
    train_info: dict = {}
    if cls.needs_training and not method.fit(ctx):
        with live_logger(cfg, out_dir, out_dir / "checkpoint.pt") as on_epoch:
            every = cfg["train"]["checkpoint_every"]
            train_info = feature_loop(
                method, ctx, mcfg, out_dir / "checkpoint.pt", every, progress, stop_after, on_epoch
            )
        method.after_training(ctx)
    t_train = time.time() - t0 - t_load
    tested, tctx = target_model(cfg, source, cls, mcfg, shots, seed, target, method.trainable_state(), device)
    metrics = target_metrics(cfg, tested, tctx, source, target, shots)
    if cls.needs_training:  # the source's few-shot validation images: the only labelled data to choose on
        metrics.update(validation_metrics(cfg, source, shots, seed, method, classes, ctx.classnames, device))
    seconds = {"load": round(t_load, 2), "train": round(t_train, 2), "total": round(time.time() - t0, 2)}
    prov = provenance(**ctx.backbone.provenance(), device=str(device))
    identity = {"dataset": grid.pair_label(source, target), "target": target}
    return save_run(
        cfg, out_dir, metrics, method, mcfg, source, shots, seed, ctx.classnames, train_info, seconds, prov, identity
    )
