"""Training curves: what the loop records per epoch, the CSVs the aggregate step extracts, the report's figure.

- ``train_loop`` returns ``curves``: per epoch the mean loss (equal to ``loss_history``), the mean of each term the
  method's ``loss`` reports, and the learning rate of the schedule; a run killed and resumed from its checkpoint
  records the same curves as one that was not; ``on_epoch`` sees each row as it is made (a live logger).
- ``aggregate`` writes one CSV per trained run under ``curves/`` from the runs' metrics.json; runs without curves add
  nothing; reading the folder back gives the same table.
- The figure draws one panel per method and highlights the seed with the median final loss.
"""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from vlprompt.analysis import aggregate
from vlprompt.analysis.report import figures
from vlprompt.methods import Method, TrainConfig
from vlprompt.training import loggers
from vlprompt.training.loop import lr_at, train_loop


class Toy(Method):
    """A linear classifier whose loss reports two terms: the cross-entropy and a weight penalty."""

    name = "toy"

    def __init__(self):
        nn.Module.__init__(self)  # no backbone: Method's __init__ reads CLIP's logit scale
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)

    def loss(self, x, y):
        ce = nn.functional.cross_entropy(self(x), y)
        penalty = self.linear.weight.square().sum()
        return ce + 0.1 * penalty, {"ce": ce.item(), "penalty": penalty.item()}


X, Y = torch.randn(12, 4, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 3
CFG = TrainConfig(epochs=6, batch_size=4, lr=0.1, warmup_epochs=1)


def batches(epoch, gen, steps):
    order = torch.randperm(len(X), generator=gen)
    for step in range(steps):
        idx = order[step * 4 : step * 4 + 4]
        yield X[idx], Y[idx]


def train(tmp_path, **kw):
    return train_loop(Toy(), CFG, 1, torch.device("cpu"), len(X), batches, tmp_path / "ckpt.pt", 2, False, **kw)


def test_the_loop_records_loss_terms_and_learning_rate_per_epoch(tmp_path):
    seen = []
    info = train(tmp_path, on_epoch=seen.append)
    curves = info["curves"]
    assert [row["epoch"] for row in curves] == list(range(1, CFG.epochs + 1))
    assert [row["loss"] for row in curves] == info["loss_history"]
    assert [row["lr"] for row in curves] == pytest.approx([lr_at(CFG, e) for e in range(CFG.epochs)])
    for row in curves:  # the loss is ce + 0.1 * penalty at every step, so also in the epoch means
        assert row["loss"] == pytest.approx(row["ce"] + 0.1 * row["penalty"], rel=1e-5)
    assert curves[-1]["ce"] < curves[0]["ce"]
    assert seen == curves


def test_a_resumed_run_records_the_same_curves(tmp_path):
    whole = train(tmp_path / "whole")["curves"]
    (tmp_path / "killed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "killed", stop_after=4)
    resumed = train(tmp_path / "killed")["curves"]
    assert resumed == whole


def _metrics(path, method, seed, curves=None, **extra):
    m = {"method": method, "dataset": "pocket_dark", "shots": 4, "seed": seed, **extra}
    if curves is not None:
        m["train"] = {"loss_history": [r["loss"] for r in curves], "curves": curves}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(m))
    return path / "metrics.json"


def test_aggregate_writes_one_csv_per_trained_run(tmp_path):
    coop = [{"epoch": e, "loss": 2.0 / e, "lr": 0.002, "ce": 2.0 / e} for e in (1, 2, 3)]
    kgcoop = [{"epoch": e, "loss": 3.0 / e, "lr": 0.002, "ce": 2.0 / e, "kg": 1.0 / e} for e in (1, 2)]
    files = [
        _metrics(tmp_path / "a", "coop", 1, coop),
        _metrics(tmp_path / "b", "kgcoop", 2, kgcoop),
        _metrics(tmp_path / "c", "zeroshot", 0, trained=False),  # no curves: adds nothing
    ]
    table = aggregate.training_curves(files)
    assert len(table) == 5 and set(table.method) == {"coop", "kgcoop"}
    out = tmp_path / "results" / "curves"
    aggregate.write_curves(table, out)
    coop_csv = pd.read_csv(aggregate.curve_path(out, "pocket_dark", "coop", 4, 1))
    assert list(coop_csv.columns) == aggregate.CURVE_KEYS + ["ce"]  # its own terms only
    assert coop_csv.loss.tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    assert "kg" in pd.read_csv(aggregate.curve_path(out, "pocket_dark", "kgcoop", 4, 2)).columns
    assert len(list(out.rglob("*.csv"))) == 2
    back = aggregate.read_curves(out)
    assert sorted(back.method.unique()) == ["coop", "kgcoop"] and len(back) == 5
    aggregate.write_curves(table[table.method == "coop"], out)  # rewritten, not added to
    assert len(list(out.rglob("*.csv"))) == 1 and not list(tmp_path.joinpath("results").glob(".curves*"))


def test_the_figure_highlights_the_median_seed(tmp_path):
    rows = [
        {"dataset": "d", "method": m, "shots": 4, "seed": s, "epoch": e, "loss": final + 1 / e}
        for m in ("coop", "kgcoop")
        for s, final in ((1, 0.5), (2, 0.1), (3, 0.3))
        for e in (1, 2, 3)
    ]
    curves = pd.DataFrame(rows)
    assert figures.median_seed(curves[curves.method == "coop"]) == 3
    assert figures.median_seed(curves[(curves.method == "coop") & (curves.seed < 3)]) == 2  # even: the lower
    path = tmp_path / "training_curves.png"
    assert figures.training_curves(curves, "d", path) == ""
    assert path.stat().st_size > 1000
    assert figures.training_curves(curves, "other", tmp_path / "none.png") is None


@pytest.mark.parametrize("kind", ["tensorboard", "csv"])
def test_a_live_logger_writes_each_epoch_while_training(tmp_path, kind):
    """`train.logging`: the run's live/ folder holds every epoch's row, read back with the backend's own reader;
    a resumed run appends the epochs after its checkpoint, a fresh one starts the log again."""
    cfg = {"train": {"logging": kind}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(KeyboardInterrupt), loggers.live_logger(cfg, run_dir, run_dir / "ckpt.pt") as on_epoch:
        train(run_dir, on_epoch=on_epoch, stop_after=4)  # checkpoint at epoch 4, then killed
    with loggers.live_logger(cfg, run_dir, run_dir / "ckpt.pt") as on_epoch:
        curves = train(run_dir, on_epoch=on_epoch)["curves"]
    logged = _read_live(run_dir / "live", kind)
    assert [e for e, _ in logged] == list(range(1, CFG.epochs + 1))
    assert [v for _, v in logged] == pytest.approx([row["loss"] for row in curves])
    with loggers.live_logger(cfg, run_dir, tmp_path / "no-checkpoint.pt") as on_epoch:  # a fresh start
        on_epoch({"epoch": 1, "loss": 9.0, "lr": 0.1})
    assert _read_live(run_dir / "live", kind) == [(1, 9.0)]


def _read_live(directory, kind):
    if kind == "csv":
        table = pd.read_csv(directory / "curves.csv")
        return list(zip(table.epoch.tolist(), table.loss.tolist(), strict=True))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_no_logger_by_default_and_a_bad_one_is_named(tmp_path):
    with loggers.live_logger({"train": {}}, tmp_path, tmp_path / "ckpt.pt") as on_epoch:
        assert on_epoch is None
    assert not (tmp_path / "live").exists()
    with pytest.raises(loggers.LoggerError, match="unknown logger 'wandb'; use none, tensorboard, csv"):
        loggers.open_logger("wandb", tmp_path, False)
