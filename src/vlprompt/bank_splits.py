"""The extra feature sets a method may ask its context for (``MethodContext.load_split``), read from the
feature bank through :class:`~vlprompt.features.FeatureBank`'s public methods only.

A run's context always carries the few-shot training views and the few-shot validation subset. Some
references need more: Tip-Adapter searches α, β on the whole validation split (on ImageNet, on the test
set), CoOp's linear probe fits un-augmented training features. What the bank holds today:

- ``test``: every test image (un-augmented) — always available;
- ``val_full``: the whole validation split, only if the bank's ``val`` holds every validation image of the
  training classes (it holds the union of the experiment's few-shot validation subsets, which is the whole
  split only when the subsets cover it); otherwise None;
- ``train_plain``: un-augmented features of the run's few-shot training images, only if the bank has a
  ``train`` split holding them (it has none yet: the training images are stored as augmented views);
  otherwise None.

A method that gets None falls back and records the fallback in its ``run_info``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlprompt.data.splits import read_split, subsample_classes

log = logging.getLogger(__name__)

NAMES = ("train_plain", "val_full", "test")


class BankSplits:
    """``load_split(name) -> (features, labels) | None`` for one run (training classes, relabelled)."""

    def __init__(self, bank, train_labels: list[int], train_rows: list, split_file: str | Path | None = None):
        self.bank, self.keep, self.train_rows = bank, list(train_labels), train_rows
        self.split_file = Path(split_file) if split_file else None

    def __call__(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name == "test":
            return self._take("test", subsample_classes(self.bank.rows("test"), self.keep))
        if name == "val_full":
            if self.split_file is None or not self.split_file.is_file():
                return None
            return self._take("val", subsample_classes(read_split(self.split_file)["val"], self.keep))
        if name == "train_plain":
            return self._take("train", self.train_rows)
        raise ValueError(f"unknown split {name!r}; available: {NAMES}")

    def _take(self, split: str, rows: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            held = {r[0] for r in self.bank.rows(split)}
        except FileNotFoundError:
            return None
        if not rows or any(r[0] not in held for r in rows):
            log.info("the feature bank's %r split lacks some of the %d images asked for", split, len(rows))
            return None
        return self.bank.take(split, [r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def train_crop_scale_min(bank) -> float | None:
    """The random-resized-crop scale the bank's training views were made with (None if not recorded)."""
    try:
        return bank.meta("train_views").get("scale_min")
    except FileNotFoundError:
        return None
