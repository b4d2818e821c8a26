"""The extra feature sets a method may ask its context for (``MethodContext.load_split``), read from the
dataset's feature bank (``grid.features_dir``) through :class:`~vlprompt.clip.features.FeatureBank`'s public
methods only.

A run's context always carries its few-shot subset's features (``<views key>/shot<K>_seed<S>.train``: V
augmented views; ``.val``: the validation images). Some references need more: Tip-Adapter searches α, β on
the whole validation split (on ImageNet, on the test set), CoOp's linear probe fits un-augmented training
features. What the bank can give, by stem of the dataset's folder:

- ``test``: every test image (un-augmented) — always there;
- ``val_full``: the whole validation split (of the training classes), from the dataset's ``val`` bank;
- ``train_plain``: the run's few-shot training images un-augmented (test transform), from the subset's
  ``<views key>/shot<K>_seed<S>.plain`` bank.

A method that gets None (an older bank without them) falls back (the few-shot validation subset, the
augmented views) and records the fallback in its ``run_info``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vlprompt.data.splits import read_split, subsample_classes

log = logging.getLogger(__name__)

NAMES = ("train_plain", "val_full", "test")


class BankSplits:
    """``load_split(name) -> (features, labels) | None`` for one run (training classes, relabelled)."""

    def __init__(
        self,
        bank,
        train_labels: list[int],
        train_rows: list,
        split_file: str | Path | None = None,
        plain: tuple | None = None,
    ):
        """``plain``: (bank, stem) of the subset's un-augmented training features."""
        self.bank, self.keep, self.train_rows = bank, list(train_labels), train_rows
        self.split_file = Path(split_file) if split_file else None
        self.plain = plain

    def __call__(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name == "test":
            return self._take("test", subsample_classes(self.bank.rows("test"), self.keep))
        if name == "val_full":
            if self.split_file is None or not self.split_file.is_file():
                return None
            return self._take("val", subsample_classes(read_split(self.split_file)["val"], self.keep))
        if name == "train_plain":
            if self.plain is None:
                return self._take("train", self.train_rows)
            return self._take(self.plain[1], self.train_rows, self.plain[0])
        raise ValueError(f"unknown split {name!r}; available: {NAMES}")

    def _take(self, split: str, rows: list, bank=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        bank = self.bank if bank is None else bank
        try:
            held = {r[0] for r in bank.rows(split)}
        except FileNotFoundError:
            return None
        if not rows or any(r[0] not in held for r in rows):
            log.info("the feature bank's %r split lacks some of the %d images asked for", split, len(rows))
            return None
        return bank.take(split, [r[0] for r in rows]), torch.tensor([r[1] for r in rows])


class UnlabelledFeatures:
    """``() -> (N, D)`` features of every image of one bank, the target's unlabelled images (config ``unlabelled``):
    the array only; the bank's rows, which hold the labels, never reach the method. With ``statistics`` (a
    layer-statistics bank of the same split, :mod:`vlprompt.clip.layer_statistics`) each row is followed by its
    image's statistics, (N, D + 2·L·W): both banks list the split's images in the split file's order, and only
    their arrays are read."""

    def __init__(self, bank, split: str, statistics=None):
        self.bank, self.split, self.statistics = bank, split, statistics

    def __call__(self) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(self.bank.array(self.split), dtype=np.float32))
        if self.statistics is None:
            return out
        stats = torch.from_numpy(np.ascontiguousarray(self.statistics.array(self.split), dtype=np.float32))
        if len(stats) != len(out):
            raise ValueError(
                f"the layer statistics of {self.split!r} hold {len(stats)} images, its features {len(out)}; "
                "rebuild the layer-statistics bank (snakemake)"
            )
        return torch.cat([out, stats], dim=1)
