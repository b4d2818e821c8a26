"""Collect run metrics into the experiment's tidy results table (``summary.csv``) and its statistics.

One row per method × dataset × shots × seed (for transfer protocols, per evaluated dataset, with the
training dataset in ``train_dataset``). Methods that need no training data (zero-shot) run once
per dataset; their row is repeated for every shots × seed of the grid (marked ``trained=False``) so
that every comparison at every shots setting has its reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from vlprompt.io import atomic_path, read_json

COLUMNS = ["method", "protocol", "dataset", "train_dataset", "shots", "seed", "base_acc", "new_acc", "all_acc", "hm",
           "backbone", "weights_sha256", "config_hash", "trained"]


def summary_table(cfg: dict, metrics_files: list[Path]) -> pd.DataFrame:
    rows = []
    for path in metrics_files:
        m = read_json(path)
        prov = m.get("provenance", {})
        base = {"method": m["method"], "protocol": m["protocol"], "dataset": m["dataset"],
                "train_dataset": m.get("train_dataset", m["dataset"]),
                "base_acc": m.get("base_acc", math.nan), "new_acc": m.get("new_acc", math.nan),
                "all_acc": m.get("all_acc", math.nan), "hm": m.get("hm", math.nan),
                "backbone": prov.get("backbone"), "weights_sha256": prov.get("weights_sha256"),
                "config_hash": m.get("config_hash"), "trained": bool(m.get("trained", True))}
        if m.get("trained", True):
            rows.append({**base, "shots": m["shots"], "seed": m["seed"]})
        else:
            rows.extend({**base, "shots": k, "seed": s} for k in cfg["shots"] for s in cfg["seeds"])
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["method", "dataset", "shots", "seed"]).reset_index(drop=True)


def aggregate(cfg: dict, metrics_files: list[Path], summary_csv: Path, stats_csv: Path) -> pd.DataFrame:
    from vlprompt.stats import compute_stats

    df = summary_table(cfg, metrics_files)
    with atomic_path(summary_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    stats = compute_stats(df, cfg.get("stats", {}))
    with atomic_path(stats_csv) as tmp:
        stats.to_csv(tmp, index=False)
    return df
