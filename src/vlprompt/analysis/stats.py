"""Statistics a reviewer would accept, on the tidy results table (``summary.csv``), and what they can show.

Following Demšar, "Statistical comparisons of classifiers over multiple data sets" (JMLR 2006):

- Per cell (method × dataset × shots): mean, standard deviation and a Student-t confidence interval over
  seeds. A method that does not depend on the seed (``trained`` false, e.g. zero-shot) is one run,
  however many seeds the grid has: it gets no interval.
- Method against each reference method, per shots setting and metric, with *datasets* as the unit of
  replication (seed-averaged scores; with 3 seeds a seed-level test can never reach p < 0.05): the
  exact Wilcoxon signed-rank test (two-sided, its permutation distribution given the ranks, so tied
  ranks and zeros are exact too), with Wilcoxon's or Pratt's handling of zero differences as the config
  says, after rounding the differences to the metric's resolution (``stats.resolution``) so that float
  noise never decides a tie or a zero; the matched-pairs rank-biserial correlation as effect size; a
  paired bootstrap CI of the mean difference; win/tie/loss counts (a tie is a difference inside the ROPE).
- The family of Wilcoxon tests is small and pre-registered (``stats.metrics``, ``stats.methods``,
  ``stats.reference_methods``, ``stats.shots``). *Before* any test runs, the smallest p-value each test
  can attain given its number of datasets N (2 / 2^N, all differences of one sign) is put through the
  correction over the family; a test that could not reach alpha even then is *descriptive* (sign
  pattern, effect size, CI; ``inference == "descriptive"``, the reason in ``note``) and leaves the
  family, and the check repeats on the smaller family (Tarone, Biometrics 1990, with Holm's correction
  as in Hommel & Krummenauer 1998). This uses N only, never an outcome, so the family-wise error rate
  stays controlled. A comparison that is zero by construction (the method equals the reference in
  every run, e.g. Tip-Adapter on new classes is zero-shot CLIP) is left out and listed.
- Bayesian signed-rank test with a region of practical equivalence (Benavoli et al., ICML 2014), via
  ``baycomp`` when it is installed: the posterior probabilities that the method is worse, practically
  equivalent or better, under a Dirichlet-process prior of strength ``stats.bayesian_prior`` put at a
  zero difference. Below 10 datasets the prior and N dominate the posterior (the report says so).
- For the transfer protocols (cross-dataset, domain generalisation) the datasets are the targets; the
  source dataset the model was trained on is not a transfer result.
- All methods together: Friedman test over datasets (``scipy.stats.friedmanchisquare``), its
  Iman–Davenport F (Demšar 2006, eq. 3; the chi² approximation is conservative at small N), and the
  Nemenyi post-hoc p-values behind the critical-difference diagram (``scikit_posthocs``).

Everything that defines the family, alpha, the ROPE, the resolution, the bootstrap resamples and the seed
comes from the config's ``stats`` block, fixed before results exist. Methods without a score for a metric
(a linear probe has no new-class accuracy) are left out of the tests that need it; ``compute_stats``
records each such exclusion as a row with ``test == "excluded"``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

DEFAULTS = {
    "reference_methods": ["zeroshot", "coop"],
    "methods": None,  # methods tested against the references; None: every method of the experiment
    "metrics": None,  # None: the primary metric only (hm for base2new, all_acc for the other protocols)
    "shots": None,  # shots settings in the family; None: every shots setting of the experiment
    "alpha": 0.05,
    "correction": "holm",  # statsmodels multipletests method over the family of Wilcoxon tests
    "zero_method": "wilcox",  # zero differences: wilcox (dropped) | pratt (ranked, then dropped) | zsplit
    "resolution": 0.01,  # accuracy points: differences are rounded to this before signs and ranks
    "rope": 1.0,  # accuracy points: |difference| <= rope is a tie and practically equivalent
    "confidence_level": 0.95,
    "bootstrap_resamples": 2000,
    "bayesian": True,  # Bayesian signed-rank test (needs baycomp; skipped with a note without it)
    "bayesian_prior": 0.5,  # strength of the Dirichlet-process prior, put at a zero difference
    "bayesian_samples": 10000,
    "seed": 0,
}
METRICS = ("base_acc", "new_acc", "hm", "all_acc")
# protocol ood's metrics (vlprompt.training.ood_metrics), summarised when the table has them; the tests compare
# higher-is-better scores (wins, the ROPE), so the OOD family is AUROC (and AUPR), never FPR@95
OOD_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "fpr95_id")
ZERO_METHODS = ("wilcox", "pratt", "zsplit")
COLUMNS = [
    "comparison",
    "method",
    "reference",
    "metric",
    "shots",
    "test",
    "inference",
    "statistic",
    "p_value",
    "min_p",
    "min_p_adjusted",
    "p_adjusted",
    "significant",
    "effect_size",
    "mean_diff",
    "ci_low",
    "ci_high",
    "n_datasets",
    "n_pairs",
    "n_pos",
    "n_neg",
    "n_zero",
    "wins",
    "ties",
    "losses",
    "prob_worse",
    "prob_equivalent",
    "prob_better",
    "note",
]


def settings(stats_cfg: dict | None) -> dict:
    """The ``stats`` config block over the defaults; an unknown key or value is an error that names it."""
    stats_cfg = dict(stats_cfg or {})
    unknown = sorted(set(stats_cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown stats setting(s) {unknown}; available: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **stats_cfg}
    if cfg["zero_method"] not in ZERO_METHODS:
        raise ValueError(f"stats.zero_method {cfg['zero_method']!r} is not one of {list(ZERO_METHODS)}")
    return cfg


def primary_metric(summary: pd.DataFrame) -> str:
    """HM for base-to-new, AUROC for OOD detection, all-class accuracy for the other protocols."""
    if len(summary) and (summary.protocol == "ood").all():
        return "auroc"
    return "hm" if (summary.protocol == "base2new").all() else "all_acc"


def family_metrics(summary: pd.DataFrame, cfg: dict) -> list[str]:
    """The metrics of the pre-registered family: ``stats.metrics``, else the primary metric alone."""
    return list(cfg["metrics"]) if cfg.get("metrics") else [primary_metric(summary)]


def family_shots(summary: pd.DataFrame, cfg: dict) -> list:
    shots = sorted(summary.shots.unique())
    return shots if cfg.get("shots") is None else [k for k in shots if k in set(cfg["shots"])]


TRANSFER = ("crossdataset", "domain_generalization")
SCORED_ON_OTHERS = (*TRANSFER, "ood")  # rows of another dataset than the training one are the results


def targets_only(summary: pd.DataFrame) -> pd.DataFrame:
    """For the transfer protocols, the rows of the target datasets (the source dataset, on which the model
    was trained, is not a transfer result: the papers' Average and tests are over targets); else all rows."""
    if "train_dataset" not in summary or not summary.protocol.isin(SCORED_ON_OTHERS).all():
        return summary
    return summary[summary.dataset != summary.train_dataset]


def single_run_methods(summary: pd.DataFrame) -> set[str]:
    """Methods that do not depend on the seed (``trained`` false): their seeds are one run repeated."""
    if "trained" not in summary:
        return set()
    return set(summary.loc[~summary.trained.astype(bool), "method"])


def bootstrap_ci(values, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaNs dropped); n < 2 or no spread gives (mean, mean)."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2 or np.ptp(x) == 0:  # e.g. zero-shot: the same value for every seed
        return float(x.mean()), float(x.mean())
    res = bootstrap(
        (x,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean, mean ± t(1 − (1 − level)/2, n − 1) · s / √n (NaNs dropped).

    With 3 seeds a percentile bootstrap interval is the lowest to the highest seed (coverage about 75 %);
    the t-interval keeps its level under normal seed noise. (nan, nan) for fewer than 2 values: one run
    has no interval.
    """
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    half = t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def harmonic(base: float, new: float) -> float:
    """Harmonic mean of base and new accuracy (NaN when both are zero or either is missing)."""
    return 2 * base * new / (base + new) if base + new > 0 else math.nan


def seed_averages(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per method × shots × seed: the mean over the experiment's datasets.

    For ``hm``, as the papers compute their Average row, the harmonic mean of the dataset-averaged base and
    new accuracies; ``hm_mean`` is the mean of the per-dataset HMs instead, the quantity the tests compare
    (datasets are their unit). A method without the metric on every dataset gets no value (dropped), so an
    average is never over fewer datasets than the others'.
    """
    n_datasets = summary.dataset.nunique()
    g = summary.groupby(["method", "shots", "seed"])
    if metric == "hm":
        avg = g[["base_acc", "new_acc"]].agg(["mean", "count"])
        complete = (avg[("base_acc", "count")] == n_datasets) & (avg[("new_acc", "count")] == n_datasets)
        values = [harmonic(b, n) for b, n in zip(avg[("base_acc", "mean")], avg[("new_acc", "mean")], strict=True)]
        out = pd.DataFrame({"hm": np.where(complete, values, np.nan)}, index=avg.index)
    else:
        column = "hm" if metric == "hm_mean" else metric
        avg = g[column].agg(["mean", "count"])
        out = pd.DataFrame({metric: avg["mean"].where(avg["count"] == n_datasets)})
    return out.reset_index().dropna(subset=[metric])


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
    """Mean, std, Student-t CI and number of runs over seeds for every method × dataset × shots and metric.

    ``n_seeds`` counts the seeds in the table, ``n_runs`` the independent runs among them: 1 for a method
    that does not depend on the seed (its seeds repeat one run), which then has no interval (NaN).
    """
    cfg = settings(stats_cfg)
    single = single_run_methods(summary)
    rows = []
    for (method, dataset, shots), g in summary.groupby(["method", "dataset", "shots"], sort=True):
        row = {"method": method, "dataset": dataset, "shots": shots, "n_seeds": g.seed.nunique()}
        if method in single:
            g = g.iloc[:1]
        row["n_runs"] = len(g)
        for m in METRICS + tuple(k for k in OOD_METRICS if k in summary):
            vals = g[m].dropna().to_numpy(dtype=float) if m in g else np.array([])
            row[f"{m}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{m}_std"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = t_interval(vals, cfg["confidence_level"])
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


def signed_rank_exact(d, zero_method: str = "wilcox") -> dict:
    """Exact two-sided Wilcoxon signed-rank test of the differences ``d`` (exact zeros are zero differences).

    The null distribution of R+ is enumerated over the 2^n sign patterns of the non-zero differences with
    their (mid)ranks, so it is exact with tied ranks and zeros as well (scipy's exact mode needs neither;
    it falls back to the normal approximation). Zeros (Wilcoxon 1945; Pratt 1959):
    ``wilcox`` drops them before ranking; ``pratt`` ranks them with the others, then drops them;
    ``zsplit`` ranks them and gives half of their rank sum to each of R+ and R−.
    Returns ``statistic`` = min(R+, R−), ``p_value`` = 2 · min(P(R+ ≤ r), P(R+ ≥ r)) capped at 1,
    ``n_pairs`` (the pairs that enter the ranking), ``r_plus`` and ``r_minus``.
    """
    from scipy.stats import rankdata

    if zero_method not in ZERO_METHODS:
        raise ValueError(f"zero_method {zero_method!r} is not one of {list(ZERO_METHODS)}")
    d = np.asarray(d, dtype=float)
    used = d[d != 0] if zero_method == "wilcox" else d
    if len(used) == 0 or not np.any(used != 0):
        return {"statistic": math.nan, "p_value": 1.0, "n_pairs": len(used), "r_plus": 0.0, "r_minus": 0.0}
    ranks2 = np.rint(2 * rankdata(np.abs(used))).astype(int)  # doubled midranks are integers
    nonzero = used != 0
    fixed2 = ranks2[~nonzero].sum() / 2 if zero_method == "zsplit" else 0  # half the zeros' ranks to each side
    r_plus2 = ranks2[nonzero & (used > 0)].sum() + fixed2
    r_minus2 = ranks2[nonzero & (used < 0)].sum() + fixed2
    # distribution of the doubled R+ over the sign patterns of the non-zero ranks: product of (1 + x^r) / 2
    moving = ranks2[nonzero]
    dist = np.zeros(moving.sum() + 1)
    dist[0] = 1.0
    for r in moving:
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: len(dist) - r]
        dist = (dist + shifted) / 2
    obs = int(moving[used[nonzero] > 0].sum())
    p = 2 * min(dist[: obs + 1].sum(), dist[obs:].sum())
    return {
        "statistic": float(min(r_plus2, r_minus2) / 2),
        "p_value": float(min(1.0, p)),
        "n_pairs": len(used),
        "r_plus": float(r_plus2 / 2),
        "r_minus": float(r_minus2 / 2),
    }


def round_to(d, resolution: float | None) -> np.ndarray:
    """``d`` rounded to a multiple of ``resolution`` (None or 0: unchanged)."""
    d = np.asarray(d, dtype=float)
    return d if not resolution else np.round(d / resolution) * resolution


def compare(
    a,
    b,
    rope: float = 0.0,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    zero_method: str = "wilcox",
    resolution: float | None = None,
) -> dict:
    """Paired comparison of two methods' per-dataset scores ``a`` and ``b`` (differences a − b).

    Exact two-sided Wilcoxon signed-rank test (:func:`signed_rank_exact`) and rank-biserial effect size on
    the differences rounded to ``resolution``; mean difference and its percentile bootstrap CI on the
    unrounded ones; the sign pattern (``n_pos``, ``n_neg``, ``n_zero``); wins / ties / losses where a tie is
    a difference inside [−rope, rope]. ``n_datasets`` counts the pairs, ``n_pairs`` those the test used.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    r = round_to(d, resolution)
    out = {
        "n_datasets": len(d),
        "mean_diff": float(d.mean()) if len(d) else math.nan,
        "wins": int((d > rope).sum()),
        "losses": int((d < -rope).sum()),
        "n_pos": int((r > 0).sum()),
        "n_neg": int((r < 0).sum()),
        "n_zero": int((r == 0).sum()),
    }
    out["ties"] = len(d) - out["wins"] - out["losses"]
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, resamples, seed, level)
    out["effect_size"] = rank_biserial(r)
    test = signed_rank_exact(r, zero_method)
    out.update(statistic=test["statistic"], p_value=test["p_value"], n_pairs=test["n_pairs"])
    return out


def bayesian_signed_rank(a, b, rope: float, samples: int = 20000, seed: int = 0, prior: float = 0.5) -> dict | None:
    """Posterior P(a worse), P(practically equivalent), P(a better) of the Bayesian signed-rank test.

    Benavoli et al. (2014) through ``baycomp.SignedRankTest`` (Dirichlet-process prior of strength
    ``prior`` at zero difference); None when baycomp is not installed.
    """
    try:
        import baycomp
    except ImportError:
        return None
    worse, equivalent, better = baycomp.SignedRankTest.probs(
        np.asarray(b, dtype=float),
        np.asarray(a, dtype=float),
        rope=rope,
        prior=prior,
        nsamples=samples,
        random_state=seed,
    )
    return {"prob_worse": float(worse), "prob_equivalent": float(equivalent), "prob_better": float(better)}


def complete_methods(scores: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Methods (columns) with a score on every dataset, and the names of those left out."""
    keep = scores.dropna(axis=1, how="any")
    return keep, sorted(set(scores.columns) - set(keep.columns))


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman–Davenport F = (N − 1) χ² / (N (k − 1) − χ²) with (k − 1, (k − 1)(N − 1)) degrees of freedom, and
    its p-value (Demšar 2006, eq. 3). Perfect agreement of the rankings (χ² = N (k − 1)) gives (inf, 0)."""
    from scipy.stats import f

    denominator = n * (k - 1) - chi2
    if denominator <= 0:
        return math.inf, 0.0
    stat = (n - 1) * chi2 / denominator
    return float(stat), float(f.sf(stat, k - 1, (k - 1) * (n - 1)))


def friedman(scores: pd.DataFrame) -> dict | None:
    """Friedman test over datasets (rows) for the methods (columns) with complete scores, with the
    Iman–Davenport F. None when fewer than 3 methods or 2 datasets remain (the test is undefined there)."""
    from scipy.stats import friedmanchisquare

    scores, _ = complete_methods(scores)
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        return None
    res = friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns])
    n, k = scores.shape
    f_stat, f_p = iman_davenport(float(res.statistic), n, k)
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "n_datasets": n,
        "methods": list(scores.columns),
        "f_statistic": f_stat,
        "f_p_value": f_p,
        "df": (k - 1, (k - 1) * (n - 1)),
    }


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


def smallest_p(n_datasets: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon test can give with n datasets: 2 / 2^n."""
    return min(1.0, 2.0 / 2**n_datasets) if n_datasets > 0 else 1.0


def max_disagreements(n_datasets: int, threshold: float) -> int:
    """The most datasets (of n) that may favour the other method, by the smallest differences, for the exact
    two-sided Wilcoxon p to stay at or below ``threshold``; -1 when not even n of n is enough."""
    worst = -1
    for j in range(n_datasets + 1):
        d = np.arange(1, n_datasets + 1, dtype=float) * np.where(np.arange(n_datasets) < j, -1, 1)
        if signed_rank_exact(d)["p_value"] > threshold:
            break
        worst = j
    return worst


def attainable(floors, alpha: float = 0.05, method: str = "holm") -> tuple[np.ndarray, np.ndarray]:
    """Which tests of a family can reach ``alpha`` after the correction, from their smallest attainable
    p-values alone (Tarone 1990): (in_family, smallest adjusted p).

    Holm, Bonferroni and Benjamini–Hochberg adjusted p-values never decrease when any p-value increases,
    so a test's smallest adjusted p is its value when every test sits at its floor. Tests that cannot reach
    alpha leave the family (they could never reject, so dropping them keeps the error rate) and the check
    repeats on the rest, whose correction is then milder. The smallest adjusted p of a test that left is
    the one it had in the family it left.
    """
    floors = np.asarray(floors, dtype=float)
    keep = np.ones(len(floors), dtype=bool)
    best = np.ones(len(floors))
    while keep.any():
        _, adjusted = adjust(floors[keep], alpha, method)
        best[keep] = adjusted
        out = adjusted > alpha
        if not out.any():
            break
        keep[np.flatnonzero(keep)[out]] = False
    return keep, best


def why_descriptive(n: int, floor: float, min_adjusted: float, cfg: dict) -> str:
    """Why a comparison cannot reach alpha, in one phrase."""
    if floor > cfg["alpha"]:
        return f"descriptive: with {n} datasets the smallest two-sided p is {floor:.3g} > alpha = {cfg['alpha']:g}"
    return (
        f"descriptive: with {n} datasets the smallest two-sided p is {floor:.3g}, {min_adjusted:.3g} after "
        f"{cfg['correction']} over the family > alpha = {cfg['alpha']:g}"
    )


def _pairs(methods: list[str], refs: list[str], tested: list[str]):
    """(method, reference) pairs, each unordered pair of references tested once."""
    for ref in refs:
        for method in methods:
            if method == ref or method not in tested or (method in refs and refs.index(method) < refs.index(ref)):
                continue
            yield method, ref


def identical_runs(summary: pd.DataFrame, method: str, ref: str, metric: str, shots, resolution) -> bool:
    """Whether ``method`` equals ``ref`` in every run (dataset × seed) at the metric's resolution: a difference
    that is zero by construction (Tip-Adapter on new classes is zero-shot CLIP), not an outcome."""
    untrained = ~summary.trained.astype(bool) if "trained" in summary else False

    def runs(m):
        sub = summary[(summary.method == m) & ((summary.shots == shots) | untrained)]
        return sub.drop_duplicates(["dataset", "seed"]).set_index(["dataset", "seed"])[metric]

    both = pd.concat([runs(method), runs(ref)], axis=1, keys=["a", "b"]).dropna()
    return len(both) > 0 and bool(np.all(round_to(both.a - both.b, resolution) == 0))


def compute_stats(summary: pd.DataFrame, stats_cfg: dict | None = None) -> pd.DataFrame:
    """Every test the report shows, one row each (the content of ``results/<experiment>/stats.csv``).

    ``test`` is one of: ``wilcoxon`` (``inference`` = ``test`` for the members of the corrected family,
    whose ``p_adjusted`` and ``significant`` come from the correction over them; ``descriptive`` for
    comparisons that could not reach alpha whatever the data, ``note`` says why), ``bayesian_signed_rank``
    (``prob_*`` columns), ``friedman``, ``iman_davenport`` and ``nemenyi`` (per shots and metric of the
    family over the methods with complete scores; Nemenyi p-values already control the family-wise error),
    and ``excluded`` (a comparison left out of the family; ``note`` says why). ``min_p`` is the smallest
    p-value a Wilcoxon test could give with its datasets, ``min_p_adjusted`` that p after the correction.
    ``mean_diff``, ``ci_*`` and wins/ties/losses are method − reference in accuracy points.
    """
    cfg = settings(stats_cfg)
    summary = targets_only(summary)
    if summary.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows, planned = [], []
    methods = sorted(summary.method.unique())
    refs = [r for r in cfg["reference_methods"] if r in methods]
    tested = methods if cfg["methods"] is None else [m for m in methods if m in set(cfg["methods"]) | set(refs)]
    missing = [r for r in cfg["reference_methods"] if r not in methods]
    missing += [m for m in cfg["methods"] or [] if m not in methods and m not in missing]
    shots_list, metrics = family_shots(summary, cfg), family_metrics(summary, cfg)
    for shots in shots_list:
        for metric in metrics:
            scores = dataset_scores(summary, metric, shots)
            for method, ref in _pairs(methods, refs, tested):
                base = {
                    "comparison": f"{method} vs {ref}",
                    "method": method,
                    "reference": ref,
                    "metric": metric,
                    "shots": shots,
                }
                pair = scores.reindex(columns=[method, ref]).dropna()
                if pair.empty:
                    nan_side = [m for m in (method, ref) if scores.reindex(columns=[m])[m].isna().all()]
                    rows.append(
                        {
                            **base,
                            "test": "excluded",
                            "n_datasets": 0,
                            "note": f"no {metric} for {', '.join(nan_side) or 'a common dataset'}",
                        }
                    )
                elif identical_runs(summary, method, ref, metric, shots, cfg["resolution"]):
                    rows.append(
                        {
                            **base,
                            "test": "excluded",
                            "n_datasets": len(pair),
                            "note": "identical to the reference in every run (zero by construction)",
                        }
                    )
                else:
                    planned.append((base, pair, len(scores) - len(pair)))
    # which tests can reach alpha is settled from the number of datasets alone, before any test runs
    floors = [smallest_p(len(pair)) for _, pair, _ in planned]
    in_family, min_adjusted = attainable(floors, cfg["alpha"], cfg["correction"])
    for (base, pair, dropped), floor, member, min_adj in zip(planned, floors, in_family, min_adjusted, strict=True):
        res = compare(
            pair[base["method"]],
            pair[base["reference"]],
            cfg["rope"],
            cfg["bootstrap_resamples"],
            cfg["seed"],
            cfg["confidence_level"],
            cfg["zero_method"],
            cfg["resolution"],
        )
        notes = [f"{dropped} dataset(s) without {base['metric']} left out"] if dropped else []
        if not member:
            notes.append(why_descriptive(len(pair), floor, min_adj, cfg))
        rows.append(
            {
                **base,
                "test": "wilcoxon",
                "inference": "test" if member else "descriptive",
                "min_p": floor,
                "min_p_adjusted": min_adj,
                **res,
                "note": "; ".join(notes),
            }
        )
        if cfg["bayesian"]:
            bayes = bayesian_signed_rank(
                pair[base["method"]],
                pair[base["reference"]],
                cfg["rope"],
                cfg["bayesian_samples"],
                cfg["seed"],
                cfg["bayesian_prior"],
            )
            if bayes is not None:
                rows.append(
                    {
                        **base,
                        "test": "bayesian_signed_rank",
                        "n_datasets": len(pair),
                        "mean_diff": res["mean_diff"],
                        **bayes,
                        "note": f"rope ±{cfg['rope']:g}; prior: Dirichlet process, strength "
                        f"{cfg['bayesian_prior']:g} at a zero difference",
                    }
                )
    for shots in shots_list:
        for metric in metrics:
            rows.extend(_all_methods(summary, metric, shots))
    for r in missing:
        rows.append(
            {
                "comparison": f"* vs {r}" if r in cfg["reference_methods"] else f"{r} vs *",
                "reference": r,
                "test": "excluded",
                "n_datasets": 0,
                "note": f"method {r!r} of the stats block is not in the results",
            }
        )
    out = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("p_adjusted", "statistic", "p_value", "min_p", "min_p_adjusted"):
        out[col] = out[col].astype(float)
    out["significant"] = False
    family = ((out.test == "wilcoxon") & (out.inference == "test")).to_numpy()
    reject, adjusted = adjust(out.loc[family, "p_value"], cfg["alpha"], cfg["correction"])
    out.loc[family, "p_adjusted"] = adjusted
    out.loc[family, "significant"] = reject
    other = out.test.isin(["friedman", "iman_davenport", "nemenyi"]).to_numpy()
    out.loc[other, "significant"] = out.loc[other, "p_adjusted"] < cfg["alpha"]
    out["significant"] = out["significant"].astype(bool)
    return out


def _all_methods(summary: pd.DataFrame, metric: str, shots) -> list[dict]:
    """Friedman, Iman–Davenport and Nemenyi rows for one metric and shots setting (none when undefined)."""
    scores = dataset_scores(summary, metric, shots)
    fr = friedman(scores)
    if fr is None:
        return []
    complete, left_out = complete_methods(scores)
    note = f"left out (incomplete {metric}): {', '.join(left_out)}" if left_out else ""
    common = {
        "comparison": "all methods",
        "method": ",".join(fr["methods"]),
        "reference": "",
        "metric": metric,
        "shots": shots,
        "n_datasets": fr["n_datasets"],
    }
    rows = [
        {
            **common,
            "test": "friedman",
            "statistic": fr["statistic"],
            "p_value": fr["p_value"],
            "p_adjusted": fr["p_value"],
            "note": note,
        },
        {
            **common,
            "test": "iman_davenport",
            "statistic": fr["f_statistic"],
            "p_value": fr["f_p_value"],
            "p_adjusted": fr["f_p_value"],
            "note": "; ".join(filter(None, [f"F({fr['df'][0]}, {fr['df'][1]})", note])),
        },
    ]
    ranks, p = mean_ranks(complete), nemenyi(complete)
    for i, m1 in enumerate(ranks.index):
        for m2 in ranks.index[i + 1 :]:
            rows.append(
                {
                    "comparison": f"{m1} vs {m2}",
                    "method": m1,
                    "reference": m2,
                    "metric": metric,
                    "shots": shots,
                    "test": "nemenyi",
                    "statistic": ranks[m2] - ranks[m1],
                    "p_value": p.loc[m1, m2],
                    "p_adjusted": p.loc[m1, m2],
                    "n_datasets": fr["n_datasets"],
                    "note": f"mean ranks {ranks[m1]:.2f} vs {ranks[m2]:.2f}",
                }
            )
    return rows
