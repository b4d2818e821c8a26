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
    return score(predict_chunks(method, features, chunk), labels)


def score(preds: torch.Tensor, labels: torch.Tensor) -> tuple[float, list]:
    """Top-1 accuracy in percent and per-class accuracy (NaN for a class with no test image)."""
    correct = (preds == labels).float()
    n_cls = int(labels.max()) + 1 if len(labels) else 0
    per_class = [
        float(correct[labels == c].mean() * 100) if (labels == c).any() else float("nan") for c in range(n_cls)
    ]
    return (float(correct.mean() * 100) if len(labels) else float("nan")), per_class


def evaluate(
    method,
    test_rows: list,
    test_features: torch.Tensor,
    classes: dict,
    protocol: str,
    trained_on: list[str],
    device: torch.device,
) -> dict:
    """Evaluate ``method`` on the cached test features; returns the metrics dict of a run."""
    position = {r[0]: i for i, r in enumerate(test_rows)}

    def predict(rows: list) -> torch.Tensor:
        idx = torch.tensor([position[r[0]] for r in rows], dtype=torch.long)
        return predict_chunks(method, test_features[idx].to(device))

    return evaluate_parts(method, test_rows, classes, protocol, trained_on, predict)


@torch.no_grad()
def predict_chunks(method, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Predicted class of each feature row, computed in chunks, on the CPU."""
    return (
        torch.cat([method(features[i : i + chunk]).argmax(-1).cpu() for i in range(0, len(features), chunk)])
        if len(features)
        else torch.zeros(0, dtype=torch.long)
    )


def evaluate_parts(method, test_rows: list, classes: dict, protocol: str, trained_on: list[str], predict) -> dict:
    """The metrics of a run, whatever the method reads: ``predict(rows)`` returns the predicted index
    (into the part's classes) of each test row of a part, after ``method.set_classes`` has switched the
    method to that part's classes. Base2new: base and new each a closed set, and their harmonic mean;
    other protocols: all classes. A method that cannot change classes (linear probe) gets NaN there."""
    names = classes["classnames"]
    method.eval()
    out: dict = {}
    parts = (
        [("base", classes["base"]), ("new", classes["new"])]
        if protocol == "base2new"
        else [("all", list(range(len(names))))]
    )  # fewshot, crossdataset, domain generalisation: all classes
    if protocol == "ood":  # ID accuracy: the in-distribution classes, those the model was trained on
        parts = [("all", [names.index(n) for n in trained_on])]
    for part, keep in parts:
        keep_names = [names[i] for i in keep]
        rows = subsample_classes(test_rows, keep)  # labels relabelled to 0..len(keep)-1
        if keep_names != trained_on:
            try:
                method.set_classes(keep_names)
            except NotImplementedError:
                out[f"{part}_acc"] = float("nan")
                continue
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
        out[f"{part}_acc"], out[f"{part}_per_class"] = score(predict(rows), labels)
        out[f"{part}_n"] = len(rows)
    if protocol == "base2new":
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
    return out
