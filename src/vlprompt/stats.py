"""Statistics a reviewer would accept, on the tidy results table (``summary.csv``).

Following Demšar, "Statistical comparisons of classifiers over multiple data sets" (JMLR 2006):

- Per cell (method × dataset × shots): mean, standard deviation and a bootstrap confidence interval
  over seeds (``scipy.stats.bootstrap``, percentile method).
- Method against each reference method, per shots setting and metric, with *datasets* as the unit of
  replication (seed-averaged scores; with 3 seeds a seed-level test can never reach p < 0.05):
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), the matched-pairs rank-biserial correlation as
  effect size, a paired bootstrap CI of the mean difference, win/tie/loss counts (a tie is a difference
  inside the ROPE), and Holm's correction over the whole family of Wilcoxon tests (``statsmodels``).
- Bayesian signed-rank test with a region of practical equivalence (Benavoli et al., ICML 2014), via
  ``baycomp`` when it is installed: the posterior probabilities that the method is worse, practically
  equivalent or better.
- All methods together: Friedman test over datasets (``scipy.stats.friedmanchisquare``) and the Nemenyi
  post-hoc p-values behind the critical-difference diagram (``scikit_posthocs``).

Everything that defines the family (reference methods, metrics, shots), alpha, the ROPE, the bootstrap
resamples and the seed comes from the config's ``stats`` block, fixed before results exist.
Methods without a score for a metric (a linear probe has no new-class accuracy) are left out of the tests
that need it; ``compute_stats`` records each such exclusion as a row with ``test == "excluded"``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DEFAULTS = {
    "reference_methods": ["zeroshot", "coop"],
    "metrics": None,  # None: hm, base_acc, new_acc for base2new; all_acc for the other protocols
    "shots": None,  # shots settings in the family; None: every shots setting of the experiment
    "alpha": 0.05,
    "correction": "holm",  # statsmodels multipletests method over the family of Wilcoxon tests
    "rope": 1.0,  # accuracy points: |difference| <= rope is a tie and practically equivalent
    "confidence_level": 0.95,
    "bootstrap_resamples": 2000,
    "bayesian": True,  # Bayesian signed-rank test (needs baycomp; skipped with a note without it)
    "bayesian_samples": 10000,
    "seed": 0,
}
METRICS = ("base_acc", "new_acc", "hm", "all_acc")
COLUMNS = ["comparison", "method", "reference", "metric", "shots", "test", "statistic", "p_value", "p_adjusted",
           "significant", "effect_size", "mean_diff", "ci_low", "ci_high", "n_datasets", "wins", "ties", "losses",
           "prob_worse", "prob_equivalent", "prob_better", "note"]


def settings(stats_cfg: dict | None) -> dict:
    """The ``stats`` config block over the defaults; an unknown key is an error that names it."""
    stats_cfg = dict(stats_cfg or {})
    unknown = sorted(set(stats_cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown stats setting(s) {unknown}; available: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **stats_cfg}


def primary_metric(summary: pd.DataFrame) -> str:
    """HM for base-to-new, all-class accuracy for the other protocols."""
    return "hm" if (summary.protocol == "base2new").all() else "all_acc"


def family_metrics(summary: pd.DataFrame, cfg: dict) -> list[str]:
    if cfg.get("metrics"):
        return list(cfg["metrics"])
    return ["hm", "base_acc", "new_acc"] if primary_metric(summary) == "hm" else ["all_acc"]


def family_shots(summary: pd.DataFrame, cfg: dict) -> list:
    shots = sorted(summary.shots.unique())
    return shots if cfg.get("shots") is None else [k for k in shots if k in set(cfg["shots"])]


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaNs dropped); n < 2 or no spread gives (mean, mean)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2 or np.ptp(x) == 0:  # e.g. zero-shot: the same value for every seed
        return float(x.mean()), float(x.mean())
    res = bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def rank_biserial(diffs) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014): (R+ − R−) / (R+ + R−) over non-zero differences."""
    from scipy.stats import rankdata

    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def cell_summary(summary: pd.DataFrame, stats_cfg: dict | None = None) -> pd.DataFrame:
    """Mean, std, bootstrap CI and n over seeds for every method × dataset × shots and metric."""
    cfg = settings(stats_cfg)
    rows = []
    for (method, dataset, shots), g in summary.groupby(["method", "dataset", "shots"], sort=True):
        row = {"method": method, "dataset": dataset, "shots": shots, "n_seeds": g.seed.nunique()}
        for m in METRICS:
            vals = g[m].dropna().to_numpy(dtype=float) if m in g else np.array([])
            row[f"{m}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{m}_std"] = vals.std(ddof=1) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(
                vals, cfg["bootstrap_resamples"], cfg["seed"], cfg["confidence_level"])
        rows.append(row)
    return pd.DataFrame(rows)


def dataset_scores(summary: pd.DataFrame, metric: str, shots) -> pd.DataFrame:
    """Seed-averaged scores at one shots setting: one row per dataset, one column per method.

    A method that needs no training data (``trained`` false, e.g. zero-shot) and has no rows at this
    shots setting is taken from any shots setting, so that it stays the reference everywhere.
    """
    sub = summary[summary.shots == shots]
    if "trained" in summary:
        untrained = summary[~summary.trained.astype(bool) & ~summary.method.isin(sub.method.unique())]
        sub = pd.concat([sub, untrained.drop_duplicates(["method", "dataset", "seed"])])
    return sub.groupby(["dataset", "method"])[metric].mean().unstack("method")


def compare(a, b, rope: float = 0.0, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired comparison of two methods' per-dataset scores ``a`` and ``b`` (differences a − b).

    Two-sided Wilcoxon signed-rank test (zero differences dropped, as Wilcoxon did), rank-biserial
    effect size, percentile bootstrap CI of the mean difference, and wins / ties / losses where a tie is
    a difference inside [−rope, rope].
    """
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"n_datasets": len(d), "mean_diff": float(d.mean()) if len(d) else math.nan,
           "wins": int((d > rope).sum()), "losses": int((d < -rope).sum())}
    out["ties"] = len(d) - out["wins"] - out["losses"]
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, resamples, seed, level)
    out["effect_size"] = rank_biserial(d)
    if len(d) == 0 or np.all(d == 0):
        out["statistic"], out["p_value"] = math.nan, 1.0
    else:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def bayesian_signed_rank(a, b, rope: float, samples: int = 20000, seed: int = 0) -> dict | None:
    """Posterior P(a worse), P(practically equivalent), P(a better) of the Bayesian signed-rank test.

    Benavoli et al. (2014) through ``baycomp.SignedRankTest`` (Dirichlet-process prior of strength 0.5
    at zero difference); None when baycomp is not installed.
    """
    try:
        import baycomp
    except ImportError:
        return None
    worse, equivalent, better = baycomp.SignedRankTest.probs(
        np.asarray(b, dtype=float), np.asarray(a, dtype=float), rope=rope, nsamples=samples, random_state=seed)
    return {"prob_worse": float(worse), "prob_equivalent": float(equivalent), "prob_better": float(better)}


def complete_methods(scores: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Methods (columns) with a score on every dataset, and the names of those left out."""
    keep = scores.dropna(axis=1, how="any")
    return keep, sorted(set(scores.columns) - set(keep.columns))


def friedman(scores: pd.DataFrame) -> dict | None:
    """Friedman test over datasets (rows) for the methods (columns) with complete scores.

    None when fewer than 3 methods or 2 datasets remain (the test is undefined there).
    """
    from scipy.stats import friedmanchisquare

    scores, _ = complete_methods(scores)
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        return None
    res = friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns])
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n_datasets": scores.shape[0],
            "methods": list(scores.columns)}


def mean_ranks(scores: pd.DataFrame) -> pd.Series:
    """Average rank of each method over datasets, 1 = best (ties share the average rank)."""
    return scores.rank(axis=1, ascending=False).mean().sort_values()


def nemenyi(scores: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values after Friedman (methods × methods), for methods with complete scores."""
    import scikit_posthocs as sp

    scores, _ = complete_methods(scores)
    p = sp.posthoc_nemenyi_friedman(scores.to_numpy())
    p.index, p.columns = scores.columns, scores.columns
    return p


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks for k methods over n datasets (Demšar 2006, eq. 4)."""
    from scipy.stats import studentized_range

    q_alpha = studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6 * n)))


def adjust(pvalues, alpha: float = 0.05, method: str = "holm") -> tuple[np.ndarray, np.ndarray]:
    """Family-wise correction (statsmodels ``multipletests``): (reject, adjusted p-values)."""
    from statsmodels.stats.multitest import multipletests

    pvalues = np.asarray(pvalues, dtype=float)
    if len(pvalues) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    reject, adjusted, _, _ = multipletests(pvalues, alpha=alpha, method=method)
    return reject.astype(bool), adjusted


def _pairs(methods: list[str], refs: list[str]):
    """(method, reference) pairs, each unordered pair of references tested once."""
    for ref in refs:
        for method in methods:
            if method == ref or (method in refs and refs.index(method) < refs.index(ref)):
                continue
            yield method, ref


def compute_stats(summary: pd.DataFrame, stats_cfg: dict | None = None) -> pd.DataFrame:
    """Every test the report shows, one row each (the content of ``results/<experiment>/stats.csv``).

    ``test`` is one of: ``wilcoxon`` (the corrected family; ``p_adjusted`` and ``significant`` come from
    the correction over all of them), ``bayesian_signed_rank`` (``prob_*`` columns), ``friedman`` and
    ``nemenyi`` (per shots and metric over the methods with complete scores; Nemenyi p-values already
    control the family-wise error), and ``excluded`` (a comparison that could not be run; ``note`` says why).
    ``mean_diff``, ``ci_*`` and wins/ties/losses are method − reference in accuracy points.
    """
    cfg = settings(stats_cfg)
    if summary.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    methods = sorted(summary.method.unique())
    refs = [r for r in cfg["reference_methods"] if r in methods]
    missing_refs = [r for r in cfg["reference_methods"] if r not in methods]
    for shots in family_shots(summary, cfg):
        for metric in family_metrics(summary, cfg):
            scores = dataset_scores(summary, metric, shots)
            for method, ref in _pairs(methods, refs):
                base = {"comparison": f"{method} vs {ref}", "method": method, "reference": ref, "metric": metric,
                        "shots": shots}
                pair = scores.reindex(columns=[method, ref]).dropna()
                if pair.empty:
                    nan_side = [m for m in (method, ref) if scores.reindex(columns=[m])[m].isna().all()]
                    rows.append({**base, "test": "excluded", "n_datasets": 0,
                                 "note": f"no {metric} for {', '.join(nan_side) or 'a common dataset'}"})
                    continue
                res = compare(pair[method], pair[ref], cfg["rope"], cfg["bootstrap_resamples"], cfg["seed"],
                              cfg["confidence_level"])
                dropped = len(scores) - len(pair)
                note = f"{dropped} dataset(s) without {metric} left out" if dropped else ""
                rows.append({**base, "test": "wilcoxon", **res, "note": note})
                if cfg["bayesian"]:
                    bayes = bayesian_signed_rank(pair[method], pair[ref], cfg["rope"], cfg["bayesian_samples"],
                                                 cfg["seed"])
                    if bayes is not None:
                        rows.append({**base, "test": "bayesian_signed_rank", "n_datasets": len(pair),
                                     "mean_diff": res["mean_diff"], **bayes, "note": f"rope ±{cfg['rope']:g}"})
            fr = friedman(scores)
            if fr is None:
                continue
            _, left_out = complete_methods(scores)
            note = f"left out (incomplete {metric}): {', '.join(left_out)}" if left_out else ""
            rows.append({"comparison": "all methods", "method": ",".join(fr["methods"]), "reference": "",
                         "metric": metric, "shots": shots, "test": "friedman", "statistic": fr["statistic"],
                         "p_value": fr["p_value"], "p_adjusted": fr["p_value"], "n_datasets": fr["n_datasets"],
                         "note": note})
            complete, _ = complete_methods(scores)
            ranks, p = mean_ranks(complete), nemenyi(complete)
            for i, m1 in enumerate(ranks.index):
                for m2 in ranks.index[i + 1:]:
                    rows.append({"comparison": f"{m1} vs {m2}", "method": m1, "reference": m2, "metric": metric,
                                 "shots": shots, "test": "nemenyi", "statistic": ranks[m2] - ranks[m1],
                                 "p_value": p.loc[m1, m2], "p_adjusted": p.loc[m1, m2],
                                 "n_datasets": fr["n_datasets"],
                                 "note": f"mean ranks {ranks[m1]:.2f} vs {ranks[m2]:.2f}"})
    for r in missing_refs:
        rows.append({"comparison": f"* vs {r}", "reference": r, "test": "excluded", "n_datasets": 0,
                     "note": f"reference method {r!r} is not in the results"})
    out = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("p_adjusted", "statistic", "p_value"):
        out[col] = out[col].astype(float)
    out["significant"] = False
    family = (out.test == "wilcoxon").to_numpy()
    reject, adjusted = adjust(out.loc[family, "p_value"], cfg["alpha"], cfg["correction"])
    out.loc[family, "p_adjusted"] = adjusted
    out.loc[family, "significant"] = reject
    other = out.test.isin(["friedman", "nemenyi"]).to_numpy()
    out.loc[other, "significant"] = out.loc[other, "p_adjusted"] < cfg["alpha"]
    out["significant"] = out["significant"].astype(bool)
    return out


def smallest_p(n_datasets: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon test can give with n datasets: 2 / 2^n."""
    return 2.0 / 2**n_datasets if n_datasets > 0 else 1.0
