"""Collect run metrics into the experiment's tidy results table (``summary.csv``) and its statistics.

One row per method × dataset × shots × seed (for transfer protocols, per evaluated dataset, with the
training dataset in ``train_dataset``). Methods that need no training data (zero-shot) run once
per dataset; their row is repeated for every shots × seed of the grid (marked ``trained=False``) so
that every comparison at every shots setting has its reference.

``metrics.json`` beside it is the experiment in a few numbers, DVC's metrics file (``dvc metrics show``,
``dvc metrics diff``): each metric's mean per method and shots over datasets and seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vlprompt.io import atomic_path, atomic_write_text, read_artefact_json, verify_file

METRICS = ["base_acc", "new_acc", "hm", "all_acc"]  # in the order metrics.json lists them
COLUMNS = [
    "method",
    "protocol",
    "dataset",
    "train_dataset",
    "shots",
    "seed",
    "base_acc",
    "new_acc",
    "all_acc",
    "hm",
    "backbone",
    "weights_sha256",
    "config_hash",
    "trained",
    "python",
    "lock_sha256",
    "env_matches_lock",
]
# A run whose method reports a generalisation bound (``method_info.bound``: PAC-Bayes prompt search) adds these
# columns to the table (absent otherwise): the training accuracy, the bound's lower bounds on test accuracy, its prior.
BOUND_COLUMNS = {
    "train_acc": "train_accuracy",
    "acc_bound": "accuracy_bound",
    "acc_bound_kl": "accuracy_bound_kl",
    "bound_prior": "prior",
}


def summary_table(cfg: dict, metrics_files: list[Path]) -> pd.DataFrame:
    """The tidy table of ``metrics_files``; each run's model is checked against the checksum its metrics
    recorded, so a damaged run stops the table with the command that rebuilds it."""
    rows = []
    for path in metrics_files:
        m = read_artefact_json(path)
        for name, record in m.get("artefacts", {}).items():
            verify_file(Path(path).with_name(name), record)
        prov = m.get("provenance", {})
        env = prov.get("environment") or {}  # absent in runs recorded before environments were
        base = {
            "method": m["method"],
            "protocol": m["protocol"],
            "dataset": m["dataset"],
            "train_dataset": m.get("train_dataset", m["dataset"]),
            "base_acc": m.get("base_acc", math.nan),
            "new_acc": m.get("new_acc", math.nan),
            "all_acc": m.get("all_acc", math.nan),
            "hm": m.get("hm", math.nan),
            "backbone": prov.get("backbone"),
            "weights_sha256": prov.get("weights_sha256"),
            "config_hash": m.get("config_hash"),
            "trained": bool(m.get("trained", True)),
            "python": env.get("python", (prov.get("versions") or {}).get("python")),
            "lock_sha256": env.get("lock_sha256"),
            "env_matches_lock": env.get("matches_lock"),
        }
        bound = (m.get("method_info") or {}).get("bound") or {}
        base.update({col: bound[key] for col, key in BOUND_COLUMNS.items() if key in bound})
        if m.get("trained", True):
            rows.append({**base, "shots": m["shots"], "seed": m["seed"]})
        else:
            rows.extend({**base, "shots": k, "seed": s} for k in cfg["shots"] for s in cfg["seeds"])
    extra = [c for c in BOUND_COLUMNS if any(c in r for r in rows)]
    df = pd.DataFrame(rows, columns=COLUMNS + extra)
    return df.sort_values(["method", "dataset", "shots", "seed"]).reset_index(drop=True)


def mean_metrics(summary: pd.DataFrame, decimals: int = 4) -> dict:
    """``{method: {"<shots>shot": {metric: mean}}}``: each metric's mean over datasets and seeds.

    Methods in the table's order (sorted), shots in increasing order, metrics in ``METRICS`` order, so
    the file is the same for the same table; a metric with no value for a method and shots (new-class
    accuracy of a linear probe, base/new accuracy under the all-classes protocols) is left out.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    means = summary.groupby(["method", "shots"], sort=True)[METRICS].mean()
    for (method, shots), row in means.iterrows():
        values = {k: round(float(row[k]), decimals) for k in METRICS if not math.isnan(row[k])}
        out.setdefault(method, {})[f"{int(shots)}shot"] = values
    return out


def write_metrics(summary: pd.DataFrame, path: Path) -> dict:
    metrics = mean_metrics(summary)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def aggregate(
    cfg: dict, metrics_files: list[Path], summary_csv: Path, stats_csv: Path, metrics_json: Path | None = None
) -> pd.DataFrame:
    from vlprompt.analysis.stats import compute_stats

    df = summary_table(cfg, metrics_files)
    with atomic_path(summary_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    if metrics_json is not None:
        write_metrics(df, metrics_json)
    stats = compute_stats(df, cfg.get("stats", {}))
    with atomic_path(stats_csv) as tmp:
        stats.to_csv(tmp, index=False)
    return df
