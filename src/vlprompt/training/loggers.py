"""Live training loggers: each epoch's row of the training curves, written while a run trains.

The config's ``train.logging`` chooses one: ``none`` (the default: the curves are recorded in the run's
metrics.json at the end either way), ``tensorboard`` (event files, ``tensorboard --logdir results/<experiment>/runs``)
or ``csv`` (a CSV file that grows an epoch at a time). Each writes into ``live/`` of the run's directory, so a
run's live log sits beside its metrics; a run that starts afresh (no checkpoint to resume from) clears it first.

A logger is the small interface ``EpochLogger``: ``log(row)`` with the row ``train_loop`` passes to its
``on_epoch`` (``epoch``, ``loss``, ``lr`` and the method's loss terms) and ``close()``. Another backend (W&B,
MLflow) is one more class and one more entry of ``LOGGERS``.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
from pathlib import Path

from vlprompt.experiment.config import ConfigError


class LoggerError(ConfigError):
    """A logger that cannot start; the message names the setting and the fix (one line from the CLI, as every
    config error)."""


class EpochLogger:
    """Receives one row per epoch; ``close`` flushes what it holds."""

    def log(self, row: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardLogger(EpochLogger):
    """Scalars ``train/<key>`` at step ``epoch`` in TensorBoard event files (torch's ``SummaryWriter``)."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LoggerError(
                "train.logging: tensorboard needs the tensorboard package (pip install tensorboard==2.21.0), "
                "or set train.logging to csv or none"
            ) from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(f"train/{key}", float(value), int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CSVLogger(EpochLogger):
    """``curves.csv``, one line per epoch, flushed at once; the columns are those of the first row."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "curves.csv"
        self.columns: list[str] | None = None

    def log(self, row: dict) -> None:
        new = self.columns is None and not self.path.exists()
        if self.columns is None:
            self.columns = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


LOGGERS = {"tensorboard": TensorBoardLogger, "csv": CSVLogger}


def open_logger(kind: str, run_dir: Path, resuming: bool) -> EpochLogger | None:
    """The logger ``train.logging`` names, writing into ``run_dir/live`` (cleared unless ``resuming``); None for
    ``none``."""
    if kind in (None, "none"):
        return None
    if kind not in LOGGERS:
        raise LoggerError(f"train.logging: unknown logger {kind!r}; use none, {', '.join(LOGGERS)}")
    directory = Path(run_dir) / "live"
    if not resuming:
        shutil.rmtree(directory, ignore_errors=True)
    return LOGGERS[kind](directory)


@contextlib.contextmanager
def live_logger(cfg: dict, run_dir: Path, ckpt: Path):
    """The ``on_epoch`` callable of the config's ``train.logging`` for a run in ``run_dir`` (None when off),
    closed when the block ends; a run resuming from ``ckpt`` keeps the live log it has."""
    logger = open_logger((cfg.get("train") or {}).get("logging", "none"), run_dir, Path(ckpt).exists())
    try:
        yield None if logger is None else logger.log
    finally:
        if logger is not None:
            logger.close()
