"""Statistics a reviewer would accept, on the tidy results table (``summary.csv``).

- Per cell (method × dataset × shots): mean, standard deviation and a 95% bootstrap confidence
  interval over seeds (``scipy.stats.bootstrap``, percentile method).
- Method against each reference method, per shots setting and metric, with *datasets* as the unit
  of replication (seed-averaged scores; with 3 seeds a seed-level test can never reach p < 0.05):
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), matched-pairs rank-biserial correlation as
  effect size, a paired bootstrap CI of the mean difference, win/tie/loss counts, and Holm's
  correction over the whole family of comparisons the report shows (``statsmodels``).
- All methods together: Friedman test over datasets (``scipy.stats.friedmanchisquare``) and the
  Nemenyi post-hoc matrix for the critical-difference diagram (``scikit_posthocs``).

The family (reference methods, metrics), alpha and the tie tolerance are fixed in the config's
``stats`` block before results exist.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DEFAULTS = {
    "reference_methods": ["zeroshot", "coop"],
    "metrics": None,  # None: hm, base_acc, new_acc for base2new; all_acc otherwise
    "alpha": 0.05,
    "tie_tolerance": 0.0,  # |difference| (accuracy points) at or below which a dataset counts as a tie
    "bootstrap_resamples": 2000,
    "seed": 0,
}
METRICS = ("base_acc", "new_acc", "hm", "all_acc")


def settings(stats_cfg: dict | None) -> dict:
    return {**DEFAULTS, **(stats_cfg or {})}


def primary_metric(df: pd.DataFrame) -> str:
    """HM for base-to-new, all-class accuracy for the other protocols."""
    return "hm" if (df.protocol == "base2new").all() else "all_acc"


def family_metrics(df: pd.DataFrame, cfg: dict) -> list[str]:
    if cfg.get("metrics"):
        return list(cfg["metrics"])
    return ["hm", "base_acc", "new_acc"] if primary_metric(df) == "hm" else ["all_acc"]


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; degenerate samples (n < 2 or no spread) give (mean, mean)."""
    from scipy.stats import bootstrap

    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2 or np.ptp(x) == 0:
        return float(x.mean()), float(x.mean())
    res = bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def rank_biserial(diffs) -> float:
    """Matched-pairs rank-biserial correlation: (R+ − R−) / (R+ + R−) over the non-zero differences."""
    from scipy.stats import rankdata

    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def cell_summary(df: pd.DataFrame, stats_cfg: dict | None = None) -> pd.DataFrame:
    """Mean, std, 95% bootstrap CI and n over seeds for every method × dataset × shots and metric."""
    cfg = settings(stats_cfg)
    rows = []
    for (method, dataset, shots), g in df.groupby(["method", "dataset", "shots"], sort=True):
        row = {"method": method, "dataset": dataset, "shots": shots, "n_seeds": g.seed.nunique()}
        for m in METRICS:
            vals = g[m].dropna().to_numpy(dtype=float)
            row[f"{m}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{m}_std"] = vals.std(ddof=1) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(vals, cfg["bootstrap_resamples"], cfg["seed"])
        rows.append(row)
    return pd.DataFrame(rows)


def dataset_scores(df: pd.DataFrame, metric: str, shots) -> pd.DataFrame:
    """Seed-averaged scores, one row per dataset and one column per method."""
    sub = df[df.shots == shots]
    return sub.groupby(["dataset", "method"])[metric].mean().unstack("method")


def compare(a, b, tie_tolerance: float = 0.0, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two methods' per-dataset scores ``a`` and ``b`` (a − b)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"n_datasets": len(d), "mean_diff": float(d.mean()) if len(d) else math.nan,
           "wins": int((d > tie_tolerance).sum()), "losses": int((d < -tie_tolerance).sum())}
    out["ties"] = len(d) - out["wins"] - out["losses"]
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, resamples, seed)
    out["effect_size"] = rank_biserial(d)
    if len(d) == 0 or np.all(d == 0):
        out["statistic"], out["p_value"] = math.nan, 1.0
    else:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def friedman(scores: pd.DataFrame) -> dict | None:
    """Friedman test over datasets (rows) for methods (columns) with complete scores; None if < 3 methods."""
    from scipy.stats import friedmanchisquare

    scores = scores.dropna(axis=1, how="any")
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        return None
    res = friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns])
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n_datasets": scores.shape[0],
            "methods": list(scores.columns)}


def nemenyi(scores: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values after Friedman (methods × methods)."""
    import scikit_posthocs as sp

    scores = scores.dropna(axis=1, how="any")
    p = sp.posthoc_nemenyi_friedman(scores.to_numpy())
    p.index, p.columns = scores.columns, scores.columns
    return p


def compute_stats(summary: pd.DataFrame, stats_cfg: dict | None = None) -> pd.DataFrame:
    """Every test the report shows, one row each (the content of ``stats.csv``)."""
    from statsmodels.stats.multitest import multipletests

    cfg = settings(stats_cfg)
    columns = ["comparison", "method", "reference", "metric", "shots", "test", "statistic", "p_value",
               "p_adjusted", "significant", "effect_size", "mean_diff", "ci_low", "ci_high", "n_datasets",
               "wins", "ties", "losses"]
    rows = []
    if summary.empty:
        return pd.DataFrame(columns=columns)
    methods = sorted(summary.method.unique())
    for shots in sorted(summary.shots.unique()):
        for metric in family_metrics(summary, cfg):
            scores = dataset_scores(summary, metric, shots)
            for ref in cfg["reference_methods"]:
                if ref not in scores:
                    continue
                for method in methods:
                    refs = cfg["reference_methods"]
                    if method == ref or method not in scores or (
                            method in refs and refs.index(method) < refs.index(ref)):  # pair already tested
                        continue
                    pair = scores[[method, ref]].dropna()
                    if pair.empty:
                        continue
                    res = compare(pair[method], pair[ref], cfg["tie_tolerance"], cfg["bootstrap_resamples"],
                                  cfg["seed"])
                    rows.append({"comparison": f"{method} vs {ref}", "method": method, "reference": ref,
                                 "metric": metric, "shots": shots, "test": "wilcoxon", **res})
        scores = dataset_scores(summary, primary_metric(summary), shots)
        fr = friedman(scores)
        if fr:
            rows.append({"comparison": "all methods", "method": ",".join(fr["methods"]), "reference": "",
                         "metric": primary_metric(summary), "shots": shots, "test": "friedman",
                         "statistic": fr["statistic"], "p_value": fr["p_value"], "n_datasets": fr["n_datasets"]})
    out = pd.DataFrame(rows, columns=columns)
    out["p_adjusted"] = out["p_adjusted"].astype(float)
    out["significant"] = False
    family = out.test == "wilcoxon"
    if family.any():
        reject, adjusted, _, _ = multipletests(out.loc[family, "p_value"], alpha=cfg["alpha"], method="holm")
        out.loc[family, "p_adjusted"] = adjusted
        out.loc[family, "significant"] = reject.astype(bool)
    out.loc[~family, "p_adjusted"] = out.loc[~family, "p_value"]
    out.loc[~family, "significant"] = out.loc[~family, "p_value"] < cfg["alpha"]
    return out
