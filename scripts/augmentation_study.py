"""The table of docs/augmentation.md: fixed feature-bank views against fresh augmentation.

Reads the runs of the three experiments of ``config/explore/augmentation*.yaml`` (run them first, in one
folder). Test accuracy (base, new, HM: the result) is each run's own, as in the experiments' summary.csv.
Validation accuracy (what a choice may look at) is computed here: every CoOp and KgCoOp model evaluated on the
bank's features of its few-shot validation images (up to 4 per class, base and new classes: what every run's
metrics.json reports as ``val_*``) and, as a check, of the whole validation split (``fullval``). A model
trained with the image encoder in the loop (``coop_in_loop``, ``kgcoop_in_loop``) holds the feature method's
parameters and is evaluated by it, through the same features as the others (its own test run encoded the
test images in fp32, the bank holds fp16: the script prints how far the two evaluations differ). Per
condition it prints the mean over seeds of the 4-dataset average and, after ±, the standard deviation of that
average over the 3 seeds; then the training seconds per run and the training views each condition encoded.

Usage: python scripts/augmentation_study.py [--workdir /tmp/aug]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd
import torch

EXPERIMENTS = {
    "explore_augmentation_views1": "views 1",
    "explore_augmentation": "views 10",
    "explore_augmentation_views50": "views 50",
}
METHODS = {"coop": "coop", "kgcoop": "kgcoop", "coop_in_loop": "coop", "kgcoop_in_loop": "kgcoop"}
METRICS = ("base_acc", "new_acc", "hm")
ORDER = {"views 1": 0, "views 10": 1, "views 50": 2, "fresh (in the loop)": 3}  # rows of the tables


def evaluate_run(cfg: dict, run, device: torch.device) -> dict:
    """Validation and test accuracy of one run's model, evaluated by its feature method on the bank: ``val_*`` on
    the run's few-shot validation images (as every run's metrics.json), ``fullval_*`` on the whole validation
    split, ``bank_test_*`` on the test split."""
    from vlprompt.methods import get_method
    from vlprompt.training.context import build_context
    from vlprompt.training.evaluate import evaluate
    from vlprompt.training.feature_runs import validation_metrics
    from vlprompt.training.records import load_model_state

    cls = get_method(run.method)
    feature_cls = getattr(cls, "method", cls)  # an in-loop method's wrapped feature method
    saved = load_model_state(run.dir(cfg), device)
    ctx, bank, classes = build_context(cfg, run.dataset, feature_cls, run.shots, run.seed, device)
    method = feature_cls(feature_cls.make_config(saved["hyperparameters"]), ctx).to(device)
    method.load_trainable_state(saved["state"])
    method.eval()
    val = validation_metrics(cfg, run.dataset, run.shots, run.seed, method, classes, ctx.classnames, device)
    out = {f"val_{m}": val[f"val_{m}"] for m in METRICS}
    for part, name in (("val", "fullval"), ("test", "bank_test")):
        method.set_classes(ctx.classnames)  # evaluate() leaves the method on the new classes; it expects the trained
        rows = bank.rows(part)
        metrics = evaluate(
            method, rows, bank.take(part, [r[0] for r in rows]), classes, "base2new", ctx.classnames, device
        )
        out.update({f"{name}_{m}": metrics[m] for m in METRICS})
    return out


def collect(workdir: Path) -> pd.DataFrame:
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import load_config

    device = torch.device("cpu")
    rows = []
    for experiment, views in EXPERIMENTS.items():
        if not (workdir / "results" / experiment / "summary.csv").exists():
            print(f"(experiment {experiment} has not finished in {workdir}: left out)")
            continue
        cfg = load_config(workdir / "results" / experiment / "config.json")
        for run in grid.runs(cfg):
            if run.method not in METHODS:
                continue
            metrics = json.loads((run.dir(cfg) / "metrics.json").read_text())
            condition = "fresh (in the loop)" if run.method.endswith("_in_loop") else views
            rows.append(
                {
                    "method": METHODS[run.method],
                    "condition": condition,
                    "dataset": run.dataset,
                    "seed": run.seed,
                    "train_seconds": metrics["seconds"]["train"],
                    **{f"test_{m}": metrics[m] for m in METRICS},
                    **evaluate_run(cfg, run, device),
                }
            )
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Per method and condition: mean over seeds of the dataset average, ± its standard deviation over seeds."""
    cols = [f"{p}_{m}" for p in ("val", "test") for m in METRICS]
    per_seed = df.groupby(["method", "condition", "seed"])[cols + ["train_seconds"]].mean()
    grouped = per_seed.groupby(["method", "condition"])
    mean, std = grouped.mean(), grouped.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = [f"{m:.1f} ± {s:.1f}" for m, s in zip(mean[c], std[c], strict=True)]
    out["train s/run"] = mean["train_seconds"].round(1)
    return out.sort_index(key=lambda idx: idx.map(lambda v: ORDER.get(v, v)))


def per_dataset(df: pd.DataFrame, metric: str = "test_hm") -> pd.DataFrame:
    """``metric`` per dataset: mean over seeds ± standard deviation over seeds."""
    grouped = df.groupby(["method", "condition", "dataset"])[metric]
    cells = grouped.mean().map("{:.1f}".format) + " ± " + grouped.std(ddof=1).map("{:.1f}".format)
    return cells.unstack("dataset").sort_index(key=lambda idx: idx.map(lambda v: ORDER.get(v, v)))


def gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Fresh augmentation minus views 10, per method and metric: the mean over seeds of the paired difference
    of dataset averages, its standard deviation over seeds, and the larger seed spread of the two conditions."""
    columns = [f"{p}_{m}" for p in ("val", "test") for m in METRICS] + ["fullval_hm"]
    per_seed = df.groupby(["method", "condition", "seed"])[columns].mean()
    rows = []
    for method in sorted(df.method.unique()):
        fresh, ten = per_seed.loc[(method, "fresh (in the loop)")], per_seed.loc[(method, "views 10")]
        for col in fresh.columns:
            diff = fresh[col] - ten[col]
            rows.append(
                {
                    "method": method,
                    "metric": col,
                    "fresh - views10": round(diff.mean(), 2),
                    "sd of paired diff": round(diff.std(ddof=1), 2),
                    "seed spread (max sd)": round(max(fresh[col].std(ddof=1), ten[col].std(ddof=1)), 2),
                }
            )
    return pd.DataFrame(rows)


def encoded_views(workdir: Path) -> dict[str, int]:
    """Training views each view setting encoded (rows not copied from a sibling subset's bank, times views)."""
    out: dict[str, int] = {}
    for sidecar in (workdir / "results" / "features").rglob("shot*_seed*.train.json"):
        meta = json.loads(sidecar.read_text())
        key = sidecar.parent.name
        out[key] = out.get(key, 0) + (len(meta["rows"]) - meta.get("copied_rows", 0)) * meta["views"]
    return dict(sorted(out.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".", help="the folder the three experiments ran in")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(args.workdir).resolve()
    os.chdir(workdir)  # the configs' roots are relative to it
    df = collect(workdir)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table(df).to_markdown())
        print()
        print(gaps(df).to_markdown(index=False))
        for metric in ("val_hm", "fullval_hm", "test_hm"):
            print(f"\n{metric} per dataset")
            print(per_dataset(df, metric).to_markdown())
    summary_gap = (df.test_hm - df.bank_test_hm).abs()
    print(
        "\nlargest |test HM of the run - test HM re-evaluated on the bank| per run: "
        + ", ".join(f"{c}: {summary_gap[df.condition == c].max():.2f}" for c in df.condition.unique())
    )
    print("training views encoded per view setting:", encoded_views(workdir))


if __name__ == "__main__":
    main()
