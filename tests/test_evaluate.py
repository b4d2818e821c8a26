"""The shared evaluation: closed-set base / new parts, harmonic mean, per-class accuracy, NaN where a
method cannot switch classes. Expected values are counted by hand."""

import math

import pytest
import torch

from vlprompt.training.evaluate import evaluate, evaluate_parts, harmonic_mean, score

CLASSES = {"classnames": ["a", "b", "c", "d"], "base": [0, 1], "new": [2, 3]}
# path, label, classname: two test images per class
ROWS = [[f"{c}{i}.png", y, c] for y, c in enumerate("abcd") for i in range(2)]


class Prototypes(torch.nn.Module):
    """Scores a feature against the one-hot prototypes of the current classes."""

    def __init__(self, names, allow_switch=True):
        super().__init__()
        self.index = {n: i for i, n in enumerate("abcd")}
        self.allow_switch = allow_switch
        self.set_classes(names, first=True)

    def set_classes(self, names, first=False):
        if not first and not self.allow_switch:
            raise NotImplementedError
        self.cols = [self.index[n] for n in names]

    def forward(self, x):
        return x[:, self.cols]


def features(predicted: list[int]) -> torch.Tensor:
    """One-hot features that make Prototypes predict ``predicted`` (global class indices) per row."""
    return torch.nn.functional.one_hot(torch.tensor(predicted), 4).float()


def test_score_counts_by_hand():
    acc, per_class = score(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert acc == 75.0
    assert per_class == [50.0, 100.0]


def test_base2new_parts_are_closed_sets():
    # base images: a0 -> a, a1 -> b (wrong), b0 -> b, b1 -> b; new: c0 -> c, c1 -> d, d0 -> d, d1 -> a.
    # "a" is not a new class: the closed set of new classes scores d1 against c and d only (both 0),
    # argmax picks the first, c: wrong either way.
    feats = features([0, 1, 1, 1, 2, 3, 3, 0])
    out = evaluate(Prototypes(["a", "b"]), ROWS, feats, CLASSES, "base2new", ["a", "b"], torch.device("cpu"))
    assert out["base_acc"] == 75.0 and out["base_per_class"] == [50.0, 100.0] and out["base_n"] == 4
    assert out["new_acc"] == 50.0 and out["new_per_class"] == [50.0, 50.0] and out["new_n"] == 4
    assert out["hm"] == pytest.approx(2 * 75 * 50 / 125)


def test_all_classes_protocol():
    feats = features([0, 0, 1, 1, 2, 2, 3, 0])
    out = evaluate(Prototypes(list("abcd")), ROWS, feats, CLASSES, "fewshot", list("abcd"), torch.device("cpu"))
    assert out["all_acc"] == 87.5 and out["all_per_class"] == [100.0, 100.0, 100.0, 50.0]
    assert "hm" not in out and "base_acc" not in out


def test_method_that_cannot_switch_classes_gets_nan_on_new():
    feats = features([0, 0, 1, 1, 2, 2, 3, 3])
    out = evaluate(
        Prototypes(["a", "b"], allow_switch=False), ROWS, feats, CLASSES, "base2new", ["a", "b"], torch.device("cpu")
    )
    assert out["base_acc"] == 100.0
    assert math.isnan(out["new_acc"]) and math.isnan(out["hm"])


def test_evaluate_parts_passes_each_part_its_rows():
    seen = []

    def predict(rows):
        seen.append([r[0] for r in rows])
        return torch.tensor([r[1] for r in rows])  # always right

    out = evaluate_parts(Prototypes(["a", "b"]), ROWS, CLASSES, "base2new", ["a", "b"], predict)
    assert seen == [["a0.png", "a1.png", "b0.png", "b1.png"], ["c0.png", "c1.png", "d0.png", "d1.png"]]
    assert out["base_acc"] == out["new_acc"] == out["hm"] == 100.0


def test_harmonic_mean():
    assert harmonic_mean(60.0, 40.0) == pytest.approx(48.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 50.0))
