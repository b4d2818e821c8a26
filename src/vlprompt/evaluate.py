"""The metrics every method is measured by: base / new accuracy and their harmonic mean, or all-class accuracy.

Base and new classes are each evaluated as their own closed set (CoCoOp's protocol): the classifier
only chooses among the base classes for base test images, and among the new classes for new ones.
"""

from __future__ import annotations

import math

import torch

from vlprompt.data.splits import subsample_classes


def harmonic_mean(a: float, b: float) -> float:
    if any(math.isnan(x) for x in (a, b)):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


@torch.no_grad()
def accuracy(method, features: torch.Tensor, labels: torch.Tensor, chunk: int = 8192) -> tuple[float, list]:
    """Top-1 accuracy in percent and per-class accuracy, predicting in chunks."""
    preds = torch.cat([method(features[i:i + chunk]).argmax(-1).cpu() for i in range(0, len(features), chunk)])
    correct = (preds == labels).float()
    n_cls = int(labels.max()) + 1 if len(labels) else 0
    per_class = [float(correct[labels == c].mean() * 100) if (labels == c).any() else float("nan")
                 for c in range(n_cls)]
    return float(correct.mean() * 100), per_class


def evaluate(method, test_rows: list, test_features: torch.Tensor, classes: dict, protocol: str,
             trained_on: list[str], device: torch.device) -> dict:
    """Evaluate ``method`` on the test split; returns the metrics dict of a run."""
    names = classes["classnames"]
    method.eval()
    out: dict = {}
    parts = [("base", classes["base"]), ("new", classes["new"])] if protocol == "base2new" else \
        [("all", list(range(len(names))))]  # fewshot, crossdataset, domain generalisation: all classes
    for part, keep in parts:
        keep_names = [names[i] for i in keep]
        rows = subsample_classes(test_rows, keep)
        keep_set = set(keep)
        idx = torch.tensor([i for i, r in enumerate(test_rows) if r[1] in keep_set], dtype=torch.long)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
        if keep_names != trained_on:
            try:
                method.set_classes(keep_names)
            except NotImplementedError:
                out[f"{part}_acc"] = float("nan")
                continue
        acc, per_class = accuracy(method, test_features[idx].to(device), labels)
        out[f"{part}_acc"] = acc
        out[f"{part}_per_class"] = per_class
        out[f"{part}_n"] = len(rows)
    if protocol == "base2new":
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
    return out
