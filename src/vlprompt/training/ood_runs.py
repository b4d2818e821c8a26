"""Protocol ``ood``: a trained (or zero-shot) run scored on one OOD set against its in-distribution test images.

The ID images are the test images of the run's dataset in its ID classes (``ood.id_classes``: all, or the base
half); the OOD images are the test images of the set's dataset in the set's classes (all, new or base). A method
scores images by its ``ood_score(features)`` (higher: in-distribution; MCM, NegLabel, LAPT define one); any other
method by the maximum softmax probability of its logits (MSP, Hendrycks & Gimpel 2017, the baseline every OOD
table starts from). The metrics are :mod:`vlprompt.training.ood_metrics`'s, beside the ID accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlprompt.clip.features import FeatureBank, pick_device
from vlprompt.data.splits import subsample_classes
from vlprompt.experiment import grid
from vlprompt.experiment.config import method_settings
from vlprompt.io import read_artefact_json
from vlprompt.methods import get_method
from vlprompt.training.context import build_context, eval_features, training_classes, unlabelled_features
from vlprompt.training.evaluate import score
from vlprompt.training.loop import seed_everything
from vlprompt.training.ood_metrics import ood_metrics
from vlprompt.training.records import load_model_state, save_transfer


@torch.no_grad()
def ood_scores(method, features: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) confidences (higher: ID) and (N,) predicted ID classes of ``features``, in chunks, on the CPU."""
    own = getattr(method, "ood_score", None)
    confs, preds = [], []
    for i in range(0, len(features), chunk):
        x = features[i : i + chunk]
        logits = method(x)
        preds.append(logits.argmax(-1).cpu())
        confs.append((own(x) if own is not None else logits.float().softmax(-1).max(-1).values).float().cpu())
    return torch.cat(confs), torch.cat(preds)


def set_rows(rows: list, classes: dict, which: str) -> list:
    """The test rows of an OOD set's classes (``all``, ``new``, ``base``), labels unchanged (never read)."""
    if which == "all":
        return list(rows)
    keep = set(classes[which])
    return [r for r in rows if r[1] in keep]


def evaluate_ood(cfg: dict, dataset: str, method_name: str, shots: int, seed: int, oodset: str, out: str | Path):
    """Score the run (``dataset``, method, shots, seed) on ``oodset``; write its metrics JSON ``out``."""
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["train"]["device"])
    cls = get_method(method_name)
    spec = grid.ood_set(cfg, oodset)
    mcfg = cls.make_config(method_settings(cfg, method_name, dataset, shots))
    seed_everything(seed)
    ctx, bank, classes = build_context(cfg, dataset, cls, shots, seed, device, for_training=False)
    if cls.reads_unlabelled:
        ctx.unlabelled = unlabelled_features(cfg, dataset)
    method = cls(mcfg, ctx).to(device)
    method.load_trainable_state(load_model_state(grid.Run(dataset, method_name, shots, seed).dir(cfg), device)["state"])
    method.eval()

    id_rows = subsample_classes(bank.rows("test"), training_classes(cfg, classes))  # labels 0..C_ID-1
    id_conf, id_pred = ood_scores(method, eval_features(cfg, bank, id_rows, cls, dataset, shots).to(device))
    id_acc, _ = score(id_pred, torch.tensor([r[1] for r in id_rows], dtype=torch.long))

    ood_bank = FeatureBank(grid.features_dir(cfg, spec.dataset))
    ood_classes = read_artefact_json(grid.classes_path(cfg, spec.dataset))
    ood_rows = set_rows(ood_bank.rows("test"), ood_classes, spec.classes)
    if spec.dataset == dataset and spec.classes != "all":
        overlap = set(training_classes(cfg, classes)) & set(ood_classes[spec.classes])
        if overlap:
            raise ValueError(f"OOD set {oodset} shares {len(overlap)} classes with the ID classes of {dataset}")
    ood_feats = eval_features(cfg, ood_bank, ood_rows, cls, spec.dataset, shots, trained_on=dataset)
    ood_conf, _ = ood_scores(method, ood_feats.to(device))

    metrics = {
        **ood_metrics(id_conf.numpy(), ood_conf.numpy()),
        "all_acc": id_acc,  # ID accuracy (the in-distribution classes), printed beside every OOD set as OpenOOD does
        "ood_set": oodset,
        "ood_group": spec.group,
        "ood_dataset": spec.dataset,
        "ood_classes": spec.classes,
        "n_id": len(id_rows),
        "n_ood": len(ood_rows),
        "score": "ood_score" if hasattr(method, "ood_score") else "msp",
    }
    return save_transfer(
        cfg, out, metrics, method_name, dataset, oodset, shots, seed, cls.needs_training, ctx.backbone, device
    )
