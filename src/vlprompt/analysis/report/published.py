"""Our numbers next to the papers' (``config/published/*.csv``, each row naming its source).

Every published table there is ViT-B/16 with OpenAI weights, 16 shots, mean of seeds 1–3. Our cells are
joined to them by (method, dataset); a cell is flagged when the published value lies outside our
Student-t interval over seeds (a method that does not depend on the seed is one run, without interval).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlprompt.analysis import stats

FILES = {
    "base2new": "published_base2novel.csv",
    "crossdataset": "published_crossdataset.csv",
    "domain_generalization": "published_domain_generalization.csv",
}
METHOD_NAMES = {"zeroshot_clip": "zeroshot"}  # paper name -> our method name
DATASET_ALIASES = {
    "oxfordflowers": "flowers102",
    "flowers": "flowers102",
    "sun": "sun397",
    "aircraft": "fgvcaircraft",
    "imagenetv2matchedfrequency": "imagenetv2",
}
PAPER_BACKBONE = "vitb16"  # normalised "ViT-B/16"; open_clip spells it ViT-B-16 or ViT-B-16-quickgelu
PAPER_SHOTS = 16


def default_dir() -> Path:
    """``config/published`` of the working directory (where the DAG runs), else of the source checkout."""
    here = Path("config/published")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[4] / "config" / "published"


def _key(name: str) -> str:
    k = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return DATASET_ALIASES.get(k, k)


def load(protocol: str | None, directory: Path | None = None) -> pd.DataFrame | None:
    """Published numbers of a protocol in long form: method, dataset, metric, published, source."""
    name = FILES.get(protocol) if protocol is not None else None
    path = Path(directory or default_dir()) / name if name else None
    if path is None or not path.exists():
        return None
    df = pd.read_csv(path)
    if protocol == "base2new":
        long = df.melt(
            id_vars=["method", "dataset", "source"],
            value_vars=["base", "new", "hm"],
            var_name="metric",
            value_name="published",
        )
        long["metric"] = long.metric.map({"base": "base_acc", "new": "new_acc", "hm": "hm"})
    else:
        value_vars = [c for c in df.columns if c not in ("method", "source")]
        long = df.melt(id_vars=["method", "source"], value_vars=value_vars, var_name="dataset", value_name="published")
        long["dataset"] = long.dataset.replace({"Average_targets": "Average"})
        long["metric"] = "all_acc"
    long["method"] = long.method.replace(METHOD_NAMES)
    return long.dropna(subset=["published"]).reset_index(drop=True)


def backbones(summary: pd.DataFrame, cfg: dict) -> list[str]:
    if "backbone" in summary and summary.backbone.notna().any():
        return sorted(summary.backbone.dropna().astype(str).unique())
    return [str(cfg.get("backbone", {}).get("model", "unknown"))]


def why_not(summary: pd.DataFrame, cfg: dict, directory: Path | None = None) -> str | None:
    """Why no published number applies to this experiment, or None when some may."""
    bb = backbones(summary, cfg)
    if any(b.lower().startswith("pocket") for b in bb) or summary.dataset.astype(str).str.startswith("pocket").all():
        return (
            "The pocket benchmark is this project's own miniature world (its own tiny CLIP and procedural "
            "datasets): no published numbers exist for it, so there is nothing to compare with."
        )
    if not all(_key(b).startswith(PAPER_BACKBONE) for b in bb):
        return (
            f"Published numbers are for ViT-B/16 (OpenAI weights); this experiment used {', '.join(bb)}, "
            "so they are not comparable."
        )
    protocol = summary.protocol.iloc[0] if "protocol" in summary and len(summary) else cfg.get("protocol")
    if load(protocol, directory) is None:
        return f"config/published/ has no table for the {protocol} protocol."
    if PAPER_SHOTS not in set(summary.shots):
        return f"Published numbers are {PAPER_SHOTS}-shot; this experiment has no {PAPER_SHOTS}-shot results."
    return None


def _our_average(summary: pd.DataFrame, method: str, metric: str, datasets: list[str], cfg: dict):
    """The papers' Average row for our runs: per seed the mean over datasets (HM of the averaged base and
    new), then mean and t-interval over seeds (one run for a method that does not depend on the seed)."""
    sub = summary[(summary.method == method) & (summary.shots == PAPER_SHOTS) & summary.dataset.isin(datasets)]
    per_seed = stats.seed_averages(sub, metric)[metric].to_numpy()
    if method in stats.single_run_methods(summary):
        per_seed = per_seed[:1]
    if len(per_seed) == 0:
        return None
    lo, hi = stats.t_interval(per_seed, cfg["confidence_level"])
    return float(np.mean(per_seed)), lo, hi


def compare(cells: pd.DataFrame, summary: pd.DataFrame, cfg: dict, directory: Path | None = None) -> pd.DataFrame:
    """Our mean and CI (16 shots), the published value, ours − published, and whether the published value
    lies outside our interval (None for a single run); one row per (method, dataset, metric) found in both.
    Empty when none apply."""
    columns = [
        "method",
        "dataset",
        "metric",
        "ours",
        "ci_low",
        "ci_high",
        "published",
        "difference",
        "outside",
        "source",
    ]
    if why_not(summary, cfg, directory):
        return pd.DataFrame(columns=columns)
    scfg = stats.settings(cfg.get("stats"))
    pub = load(summary.protocol.iloc[0], directory)
    if pub is None:  # why_not said the table exists
        return pd.DataFrame(columns=columns)
    top = cells[cells.shots == PAPER_SHOTS]
    ours_by_key = {(m, _key(d)): d for m, d in zip(top.method, top.dataset, strict=True)}
    rows = []
    for method, group in pub.groupby("method", sort=True):
        paper_datasets = [d for d in group.dataset.unique() if d != "Average"]
        matched = [ours_by_key[(method, _key(d))] for d in paper_datasets if (method, _key(d)) in ours_by_key]
        for _, p in group.iterrows():
            if p.dataset == "Average":
                if not paper_datasets or len(matched) < len(paper_datasets):
                    continue  # our average would be over other datasets than the paper's
                res = _our_average(summary, method, p.metric, matched, scfg)
                if res is None:
                    continue
                mean, lo, hi = res
            else:
                ds = ours_by_key.get((method, _key(p.dataset)))
                if ds is None:
                    continue
                o = top[(top.method == method) & (top.dataset == ds)].iloc[0]
                mean, lo, hi = o[f"{p.metric}_mean"], o[f"{p.metric}_ci_low"], o[f"{p.metric}_ci_high"]
            if np.isnan(mean):
                continue
            outside = None if np.isnan(lo) else not (lo <= p.published <= hi)  # None: one run, no interval
            rows.append(
                {
                    "method": method,
                    "dataset": p.dataset,
                    "metric": p.metric,
                    "ours": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "published": p.published,
                    "difference": mean - p.published,
                    "outside": outside,
                    "source": p.source,
                }
            )
    return pd.DataFrame(rows, columns=columns)
