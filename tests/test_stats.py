"""Each statistic against textbook or hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vlprompt import stats

# Hollander & Wolfe (1999), Table 3.1: Hamilton depression scale before (x) and after (y) tranquilizer, n = 9.
# Textbook: T+ = 5 for y - x (all |differences| distinct, no zeros), exact two-sided p = 0.039.
HW_X = np.array([1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30])
HW_Y = np.array([0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29])


def test_wilcoxon_matches_the_textbook_example():
    res = stats.compare(HW_Y, HW_X)
    assert res["statistic"] == 5.0
    assert res["p_value"] == pytest.approx(0.0390625)  # 20 / 512, exact
    assert (res["wins"], res["ties"], res["losses"]) == (2, 0, 7)
    assert res["mean_diff"] == pytest.approx(np.mean(HW_Y - HW_X))


def test_rank_biserial_by_hand():
    # differences 1, -2, 3, 4: ranks 1, 2, 3, 4; R+ = 8, R- = 2 -> (8 - 2) / 10
    assert stats.rank_biserial([1, -2, 3, 4]) == pytest.approx(0.6)
    assert stats.rank_biserial([0, 0]) == 0.0
    # textbook example: T+ = 5 of a total 45 -> (5 - 40) / 45
    assert stats.compare(HW_Y, HW_X)["effect_size"] == pytest.approx(-35 / 45)


def test_smallest_p_is_what_the_exact_test_gives_when_every_dataset_wins():
    d = np.arange(1, 7, dtype=float)
    assert stats.compare(d, np.zeros(6))["p_value"] == pytest.approx(stats.smallest_p(6)) == pytest.approx(1 / 32)


def test_all_equal_scores_give_p_one_and_ties():
    res = stats.compare([50, 60, 70], [50, 60, 70])
    assert res["p_value"] == 1.0 and res["ties"] == 3


def test_rope_counts_small_differences_as_ties():
    res = stats.compare([50.2, 61, 70], [50, 60, 70], rope=0.5)
    assert (res["wins"], res["ties"], res["losses"]) == (1, 2, 0)


def test_friedman_matches_the_reference_example():
    # scipy's documented example (heart rate of 7 patients at three times): chi2 = 10.5714, p = 0.00506.
    # By hand: rank sums R = 10, 21, 11 -> 12 / (n k (k + 1)) * sum(R^2) - 3 n (k + 1) = 12/84 * 662 - 84.
    scores = pd.DataFrame({"before": [72, 96, 88, 92, 74, 76, 82], "after": [120, 120, 132, 120, 101, 96, 112],
                           "later": [76, 95, 104, 96, 84, 72, 76]})
    res = stats.friedman(scores)
    assert res["statistic"] == pytest.approx(12 / 84 * 662 - 84) == pytest.approx(10.5714, abs=1e-4)
    assert res["p_value"] == pytest.approx(0.005063, abs=1e-6)
    # ranks always 1, 2, 3 over n datasets: chi2 = n (k - 1)
    same = pd.DataFrame({"a": [90, 80, 70, 60], "b": [85, 75, 65, 55], "c": [10, 20, 30, 40]})
    assert stats.friedman(same)["statistic"] == pytest.approx(8.0)
    assert stats.friedman(same)["p_value"] == pytest.approx(sps.chi2.sf(8.0, 2))
    assert stats.friedman(same[["a", "b"]]) is None  # undefined for 2 methods


def test_critical_difference_matches_demsar():
    # Demšar (2006), Table 5(a): q_0.05 = 1.960, 2.343, 2.569, 2.728 for k = 2..5; section 3.2.4: 4 methods over
    # 14 data sets give CD = 1.25.
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728)):
        assert stats.critical_difference(k, 6, 0.05) / math.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=1e-3)
    assert stats.critical_difference(4, 14, 0.05) == pytest.approx(1.25, abs=0.005)


def test_nemenyi_p_values_agree_with_the_critical_difference():
    # ranks always 1, 2, 3 over 6 datasets: mean ranks 1, 2, 3; CD(k=3, N=6) = 1.35, so only a-c differ
    scores = pd.DataFrame({"a": np.arange(6) + 90.0, "b": np.arange(6) + 80.0, "c": np.arange(6) + 70.0})
    p = stats.nemenyi(scores)
    assert 2 > stats.critical_difference(3, 6) > 1
    assert p.loc["a", "c"] < 0.05 < p.loc["a", "b"]
    assert p.loc["a", "c"] == pytest.approx(p.loc["c", "a"])
    assert list(stats.mean_ranks(scores)) == [1.0, 2.0, 3.0]


def test_holm_adjustment_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    reject, adjusted = stats.adjust([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(reject) == [True, False, False, True]


def fewshot_summary(values: dict, datasets: int = 6, seeds=(1, 2)) -> pd.DataFrame:
    rows = []
    for d in range(datasets):
        for seed in seeds:
            for m, f in values.items():
                rows.append({"method": m, "protocol": "fewshot", "dataset": f"d{d}", "shots": 4, "seed": seed,
                             "base_acc": math.nan, "new_acc": math.nan, "hm": math.nan, "all_acc": f(d),
                             "trained": m != "zeroshot"})
    return pd.DataFrame(rows)


def test_holm_over_the_family_in_compute_stats():
    # two methods against one reference over 6 datasets: both beat it everywhere -> p = 0.03125 each;
    # Holm: sorted p * (2, 1) -> 0.0625 and 0.03125, made monotone -> both 0.0625
    df = fewshot_summary({"zeroshot": lambda d: 50 + d, "a": lambda d: 55 + d, "b": lambda d: 57 + 2 * d})
    out = stats.compute_stats(df, {"reference_methods": ["zeroshot"], "bayesian": False})
    tests = out[out.test == "wilcoxon"].set_index("method")
    assert tests.loc["a", "p_value"] == pytest.approx(0.03125)
    assert tests.loc["a", "p_adjusted"] == pytest.approx(0.0625)
    assert tests.loc["b", "p_adjusted"] == pytest.approx(0.0625)
    assert not tests.significant.any()
    assert (tests.wins == 6).all() and tests.loc["a", "effect_size"] == 1.0
    fr = out[out.test == "friedman"].iloc[0]
    assert fr.statistic == pytest.approx(12.0)  # ranks always 1,2,3 over 6 datasets: n(k-1) = 12
    assert set(out[out.test == "nemenyi"].comparison) == {"b vs a", "b vs zeroshot", "a vs zeroshot"}


def test_methods_without_a_metric_are_excluded_and_said_so():
    rows = []
    for d in range(6):
        for seed in (1, 2, 3):
            for m, base, new in (("zeroshot", 50 + d, 52 + d), ("coop", 60 + d + seed / 10, 51 + d),
                                 ("kgcoop", 58 + d, 53 + d + seed / 10), ("linear_probe", 62 + d, math.nan)):
                rows.append({"method": m, "protocol": "base2new", "dataset": f"d{d}", "shots": 16, "seed": seed,
                             "base_acc": base, "new_acc": new, "all_acc": math.nan,
                             "hm": 2 * base * new / (base + new), "trained": m != "zeroshot"})
    out = stats.compute_stats(pd.DataFrame(rows), {"bayesian": False})
    excluded = out[out.test == "excluded"]
    assert set(excluded.metric) == {"hm", "new_acc"}
    assert set(excluded.comparison) == {"linear_probe vs zeroshot", "linear_probe vs coop"}
    assert excluded.note.str.contains("linear_probe").all()
    assert excluded.p_adjusted.isna().all()
    wil = out[out.test == "wilcoxon"]
    assert not wil.p_value.isna().any() and len(wil) == 3 + 3 + 1 + 1 + 3  # kgcoop x2, coop, lp on base
    fr = out[out.test == "friedman"].set_index("metric")
    assert "linear_probe" in fr.loc["hm", "note"] and "linear_probe" in fr.loc["base_acc", "method"]


def test_unknown_setting_is_an_error_naming_it():
    with pytest.raises(ValueError, match="tie_tol"):
        stats.settings({"tie_tol": 1})


def test_schema_defaults_are_the_module_defaults():
    from vlprompt.config import load_schema

    block = load_schema()["properties"]["stats"]
    assert block["additionalProperties"] is False
    assert {k: v["default"] for k, v in block["properties"].items()} == stats.DEFAULTS


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    x = [60.0, 62.0, 65.0]
    lo, hi = stats.bootstrap_ci(x, 2000, seed=1)
    assert lo <= np.mean(x) <= hi and lo >= 60 and hi <= 65
    assert (lo, hi) == stats.bootstrap_ci(x, 2000, seed=1)
    assert stats.bootstrap_ci([5.0], 2000) == (5.0, 5.0)
    assert stats.bootstrap_ci([7.0, 7.0, 7.0], 2000) == (7.0, 7.0)  # zero-shot: same value every seed
    assert all(math.isnan(v) for v in stats.bootstrap_ci([math.nan], 2000))


def test_cell_summary_mean_std_and_ci():
    df = pd.DataFrame({"method": "m", "dataset": "d", "shots": 1, "seed": [1, 2, 3], "base_acc": [60.0, 62, 64],
                       "new_acc": math.nan, "hm": math.nan, "all_acc": math.nan})
    cell = stats.cell_summary(df, {"bootstrap_resamples": 500}).iloc[0]
    assert cell.base_acc_mean == 62 and cell.base_acc_std == pytest.approx(2.0)
    assert 60 <= cell.base_acc_ci_low <= 62 <= cell.base_acc_ci_high <= 64
    assert math.isnan(cell.new_acc_mean) and cell.n_seeds == 3


def test_bayesian_signed_rank_probabilities():
    pytest.importorskip("baycomp")
    better = stats.bayesian_signed_rank(np.arange(6) + 55.0, np.arange(6) + 50.0, rope=1.0, samples=2000, seed=0)
    assert sum(better.values()) == pytest.approx(1.0)
    assert better["prob_better"] > 0.9 and better["prob_worse"] == 0.0
    same = stats.bayesian_signed_rank([50, 60, 70.2], [50, 60, 70], rope=1.0, samples=2000, seed=0)
    assert same["prob_equivalent"] == pytest.approx(1.0)
    assert better == stats.bayesian_signed_rank(np.arange(6) + 55.0, np.arange(6) + 50.0, 1.0, 2000, 0)
