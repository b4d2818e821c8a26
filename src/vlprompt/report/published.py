"""Our numbers next to the papers' (config/published/*.csv, each row with its source)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PUBLISHED_DIR = Path("config/published")
METHOD_NAMES = {"zeroshot_clip": "zeroshot"}  # paper name -> our method name
PAPER_BACKBONE = "ViT-B-16"  # every published table here is ViT-B/16 with OpenAI weights


def load(protocol: str, directory: Path = PUBLISHED_DIR) -> pd.DataFrame | None:
    """Published numbers of a protocol in long form: method, dataset, metric, published, source."""
    name = {"base2new": "published_base2novel.csv", "crossdataset": "published_crossdataset.csv",
            "domain_generalization": "published_domain_generalization.csv"}.get(protocol)
    path = Path(directory) / name if name else None
    if path is None or not path.exists():
        return None
    df = pd.read_csv(path)
    if protocol == "base2new":
        long = df.melt(id_vars=["method", "dataset", "source"], value_vars=["base", "new", "hm"],
                       var_name="metric", value_name="published")
        long["metric"] = long.metric.map({"base": "base_acc", "new": "new_acc", "hm": "hm"})
    else:
        value_vars = [c for c in df.columns if c not in ("method", "source") and not c.startswith("Average")]
        long = df.melt(id_vars=["method", "source"], value_vars=value_vars, var_name="dataset",
                       value_name="published")
        long["metric"] = "all_acc"
    long["method"] = long.method.replace(METHOD_NAMES)
    return long


def compare(cells: pd.DataFrame, summary: pd.DataFrame, cfg: dict, directory: Path = PUBLISHED_DIR):
    """Our mean and 95% CI, the published value, the difference and whether it lies outside our CI."""
    if not str(cfg["backbone"]["model"]).startswith(PAPER_BACKBONE):
        return None
    pub = load(cfg["protocol"], directory)
    if pub is None:
        return None
    top = cells[cells.shots == cells.shots.max()]
    rows = []
    for _, p in pub.iterrows():
        ours = top[(top.method == p.method) & (top.dataset == p.dataset)]
        if ours.empty:
            continue
        o = ours.iloc[0]
        mean, lo, hi = o[f"{p.metric}_mean"], o[f"{p.metric}_ci_low"], o[f"{p.metric}_ci_high"]
        rows.append({"method": p.method, "dataset": p.dataset, "metric": p.metric, "ours": mean, "ci_low": lo,
                     "ci_high": hi, "published": p.published, "difference": mean - p.published,
                     "outside": not (lo <= p.published <= hi), "source": p.source})
    return pd.DataFrame(rows) if rows else None
