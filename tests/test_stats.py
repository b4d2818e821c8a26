"""Each statistic against textbook or hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vlprompt.analysis import stats

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
    scores = pd.DataFrame(
        {
            "before": [72, 96, 88, 92, 74, 76, 82],
            "after": [120, 120, 132, 120, 101, 96, 112],
            "later": [76, 95, 104, 96, 84, 72, 76],
        }
    )
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
                rows.append(
                    {
                        "method": m,
                        "protocol": "fewshot",
                        "dataset": f"d{d}",
                        "shots": 4,
                        "seed": seed,
                        "base_acc": math.nan,
                        "new_acc": math.nan,
                        "hm": math.nan,
                        "all_acc": f(d),
                        "trained": m != "zeroshot",
                    }
                )
    return pd.DataFrame(rows)


def test_holm_over_the_family_in_compute_stats():
    # two methods against one reference over 7 datasets: both beat it everywhere -> exact p = 2 / 2^7 = 0.015625
    # each; Holm: sorted p * (2, 1) -> 0.03125 and 0.015625, made monotone -> both 0.03125 < 0.05
    df = fewshot_summary({"zeroshot": lambda d: 50 + d, "a": lambda d: 55 + d, "b": lambda d: 57 + 2 * d}, datasets=7)
    out = stats.compute_stats(df, {"reference_methods": ["zeroshot"], "bayesian": False})
    tests = out[out.test == "wilcoxon"].set_index("method")
    assert (tests.inference == "test").all()
    assert tests.loc["a", "p_value"] == pytest.approx(0.015625)
    assert tests.loc["a", "p_adjusted"] == pytest.approx(0.03125)
    assert tests.loc["b", "p_adjusted"] == pytest.approx(0.03125)
    assert tests.significant.all()
    assert list(tests.min_p_adjusted) == pytest.approx([0.03125] * 2)
    assert (tests.wins == 7).all() and tests.loc["a", "effect_size"] == 1.0
    fr = out[out.test == "friedman"].iloc[0]
    assert fr.statistic == pytest.approx(14.0)  # ranks always 1,2,3 over 7 datasets: n(k-1) = 14
    assert set(out[out.test == "nemenyi"].comparison) == {"b vs a", "b vs zeroshot", "a vs zeroshot"}


def test_a_family_that_cannot_reach_alpha_is_descriptive_before_any_test_runs():
    # 6 datasets: the smallest exact p is 2 / 2^6 = 0.03125 (< 0.05 for one test), but Holm over two tests
    # needs 2 * 0.03125 = 0.0625 at its first step: neither comparison can be significant, whatever the data
    df = fewshot_summary({"zeroshot": lambda d: 50 + d, "a": lambda d: 55 + d, "b": lambda d: 57 + 2 * d})
    out = stats.compute_stats(df, {"reference_methods": ["zeroshot"], "bayesian": False})
    tests = out[out.test == "wilcoxon"].set_index("method")
    assert (tests.inference == "descriptive").all() and not tests.significant.any()
    assert tests.p_adjusted.isna().all()  # not in any corrected family
    assert list(tests.min_p) == pytest.approx([0.03125] * 2)
    assert list(tests.min_p_adjusted) == pytest.approx([0.0625] * 2)
    assert tests.note.str.contains("smallest two-sided p is 0.0312, 0.0625 after holm").all()
    assert tests.loc["a", "p_value"] == pytest.approx(0.03125)  # still computed, shown as a description
    assert (tests.n_pos == 6).all() and (tests.n_neg == 0).all()
    # the same data with one method in the pre-registered family: one test at 0.03125 can reach 0.05
    one = stats.compute_stats(df, {"reference_methods": ["zeroshot"], "methods": ["a"], "bayesian": False})
    tests = one[one.test == "wilcoxon"].set_index("method")
    assert list(tests.index) == ["a"] and tests.loc["a", "inference"] == "test" and tests.loc["a", "significant"]


def test_attainable_drops_what_cannot_reach_alpha_and_rechecks_the_rest():
    # Tarone (1990): floors 2/2^8 = 0.0078 (three tests over 8 datasets) and 0.125 (two tests over 4).
    # Holm over all five: the 8-dataset tests' smallest adjusted p is 5 * 0.0078 = 0.039 <= 0.05; the 4-dataset
    # ones get at best max(2 * 0.125, 0.125) = 0.25 at Holm's steps 4 and 5 and leave; over the remaining three,
    # 3 * 0.0078 = 0.0234.
    floors = [stats.smallest_p(8)] * 3 + [stats.smallest_p(4)] * 2
    keep, best = stats.attainable(floors, 0.05, "holm")
    assert list(keep) == [True, True, True, False, False]
    assert list(best) == pytest.approx([3 / 128] * 3 + [0.25] * 2)
    # Bonferroni over 7 tests at 8 datasets: 7 * 2/256 = 0.0547 > 0.05: none; Holm is the same at its first step
    for method in ("bonferroni", "holm"):
        keep, best = stats.attainable([stats.smallest_p(8)] * 7, 0.05, method)
        assert not keep.any() and list(best) == pytest.approx([7 / 128] * 7)
    # Benjamini-Hochberg with every p at its floor: each adjusted p is the floor itself
    keep, best = stats.attainable([stats.smallest_p(8)] * 7, 0.05, "fdr_bh")
    assert keep.all() and list(best) == pytest.approx([1 / 128] * 7)
    assert stats.smallest_p(4) == 0.125 and stats.smallest_p(11) == pytest.approx(0.000977, abs=1e-6)


def test_methods_without_a_metric_are_excluded_and_said_so():
    rows = []
    for d in range(6):
        for seed in (1, 2, 3):
            for m, base, new in (
                ("zeroshot", 50 + d, 52 + d),
                ("coop", 60 + d + seed / 10, 51 + d),
                ("kgcoop", 58 + d, 53 + d + seed / 10),
                ("linear_probe", 62 + d, math.nan),
            ):
                rows.append(
                    {
                        "method": m,
                        "protocol": "base2new",
                        "dataset": f"d{d}",
                        "shots": 16,
                        "seed": seed,
                        "base_acc": base,
                        "new_acc": new,
                        "all_acc": math.nan,
                        "hm": 2 * base * new / (base + new),
                        "trained": m != "zeroshot",
                    }
                )
    out = stats.compute_stats(pd.DataFrame(rows), {"bayesian": False, "metrics": ["hm", "base_acc", "new_acc"]})
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
    from vlprompt.experiment.config import load_schema

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


def test_cell_summary_mean_std_and_t_interval():
    df = pd.DataFrame(
        {
            "method": "m",
            "dataset": "d",
            "shots": 1,
            "seed": [1, 2, 3],
            "base_acc": [60.0, 62, 64],
            "new_acc": math.nan,
            "hm": math.nan,
            "all_acc": math.nan,
        }
    )
    cell = stats.cell_summary(df, {"bootstrap_resamples": 500}).iloc[0]
    assert cell.base_acc_mean == 62 and cell.base_acc_std == pytest.approx(2.0)
    half = sps.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # 4.303 * 2 / sqrt(3) = 4.97: wider than the seeds' range
    assert (cell.base_acc_ci_low, cell.base_acc_ci_high) == pytest.approx((62 - half, 62 + half))
    assert math.isnan(cell.new_acc_mean) and cell.n_seeds == 3 and cell.n_runs == 3


def test_a_method_that_does_not_depend_on_the_seed_is_one_run():
    df = pd.DataFrame(
        {
            "method": ["zeroshot"] * 3 + ["coop"] * 3,
            "dataset": "d",
            "shots": 4,
            "seed": [1, 2, 3] * 2,
            "base_acc": [50.0] * 3 + [60.0, 62, 64],
            "new_acc": math.nan,
            "hm": math.nan,
            "all_acc": math.nan,
            "trained": [False] * 3 + [True] * 3,
        }
    )
    cells = stats.cell_summary(df).set_index("method")
    assert cells.loc["zeroshot", "n_runs"] == 1 and cells.loc["zeroshot", "n_seeds"] == 3
    assert math.isnan(cells.loc["zeroshot", "base_acc_ci_low"]) and math.isnan(cells.loc["zeroshot", "base_acc_std"])
    assert cells.loc["coop", "n_runs"] == 3 and cells.loc["coop", "base_acc_ci_low"] < 60


def test_t_interval_matches_students_sleep_data():
    # Student (1908), "The probable error of a mean", Biometrika 6: extra hours of sleep, drug 2 minus drug 1,
    # ten patients (R's `sleep` data). R: t.test(extra ~ group, data = sleep, paired = TRUE) gives the mean
    # difference -1.58 and the 95 percent confidence interval -2.4598858 -0.7001142.
    drug1 = np.array([0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0])
    drug2 = np.array([1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4])
    lo, hi = stats.t_interval(drug1 - drug2, 0.95)
    assert (lo, hi) == pytest.approx((-2.4598858, -0.7001142), abs=1e-6)
    assert all(math.isnan(v) for v in stats.t_interval([5.0]))  # one run: no interval


def test_wilcoxon_matches_scipys_documented_example():
    # scipy.stats.wilcoxon's docstring: Fisher (1935), Darwin's Zea mays, differences in height of cross- and
    # self-fertilised plants; two-sided statistic 24.0 and exact p 0.041259765625; R+ = 96 (alternative 'greater').
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75])
    res = stats.signed_rank_exact(d)
    assert res["statistic"] == 24.0 and res["p_value"] == 0.041259765625
    assert res["r_plus"] == 96.0 and res["n_pairs"] == 15


def test_wilcoxon_with_tied_ranks_is_exact_by_hand():
    # differences 1, 1, 2, -3: ranks 1.5, 1.5, 3, 4; R+ = 6. The 16 equally likely sign patterns give R+ in
    # {0, 1.5, 1.5, 3, 3, 4, 4.5, 4.5, 5.5, 5.5, 6, 7, 7, 8.5, 8.5, 10}: P(R+ >= 6) = 6/16, so p = 12/16.
    # (scipy's exact mode refuses tied ranks and falls back to the normal approximation.)
    res = stats.signed_rank_exact([1, 1, 2, -3])
    assert res["p_value"] == pytest.approx(0.75) and res["statistic"] == 4.0


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
def test_wilcoxon_zero_handling_against_enumeration(zero_method):
    from itertools import product

    rng = np.random.default_rng(1)
    for _ in range(30):
        d = rng.integers(-4, 5, rng.integers(3, 10)).astype(float)
        used = d[d != 0] if zero_method == "wilcox" else d
        if not np.any(used != 0):
            continue
        ranks = sps.rankdata(np.abs(used))
        moving, signs = ranks[used != 0], used[used != 0] > 0
        observed = moving[signs].sum()
        sums = np.array([moving[np.array(s, bool)].sum() for s in product([0, 1], repeat=len(moving))])
        p = min(1.0, 2 * min((sums <= observed).mean(), (sums >= observed).mean()))
        res = stats.signed_rank_exact(d, zero_method)
        assert res["p_value"] == pytest.approx(p) and res["n_pairs"] == len(used), d


def test_pratt_keeps_the_zeros_rank_and_wilcox_drops_it():
    # 0, 0, 1, 2, 3, 4, -5 (Pratt 1959): ranks of |d| 1.5, 1.5, 3, 4, 5, 6, 7; the zeros' ranks are then dropped:
    # R+ = 18, R- = 7, over the 2^5 patterns of {3, 4, 5, 6, 7} P(R+ >= 18) = 7/32 -> p = 14/32.
    # (R+ >= 18 means the negative ranks sum to <= 7: {}, {3}, {4}, {5}, {6}, {7}, {3, 4}.)
    # Wilcoxon drops the zeros first: 1, 2, 3, 4, -5 -> R+ = 10, R- = 5; R- <= 5 in 10 of the 2^5 patterns
    # ({}, {1}, ..., {5}, {1, 2}, {1, 3}, {1, 4}, {2, 3}) -> p = 20/32.
    d = [0, 0, 1, 2, 3, 4, -5]
    pratt, wilcox = stats.signed_rank_exact(d, "pratt"), stats.signed_rank_exact(d, "wilcox")
    assert (pratt["r_plus"], pratt["r_minus"], pratt["n_pairs"]) == (18.0, 7.0, 7)
    assert pratt["p_value"] == pytest.approx(14 / 32)
    assert (wilcox["r_plus"], wilcox["r_minus"], wilcox["n_pairs"]) == (10.0, 5.0, 5)
    assert wilcox["p_value"] == pytest.approx(20 / 32)
    with pytest.raises(ValueError, match="zero_method 'drop'"):
        stats.signed_rank_exact(d, "drop")


def test_differences_are_rounded_to_the_resolution_before_ranking():
    a = np.array([50.0, 60.0, 70.0, 80.0]) + np.array([1e-9, 0.3, -0.2, 0.3000001])
    b = np.array([50.0, 60.0, 70.0, 80.0])
    raw, rounded = stats.compare(a, b), stats.compare(a, b, resolution=0.01)
    assert raw["n_pairs"] == 4 and raw["n_zero"] == 0  # float noise decides a zero and a tie
    assert rounded["n_pairs"] == 3 and rounded["n_zero"] == 1 and (rounded["n_pos"], rounded["n_neg"]) == (2, 1)
    # 0.3, -0.2, 0.3 -> ranks 2.5, 1, 2.5 (a tie once rounded): R+ = 5, R- = 1
    assert rounded["statistic"] == 1.0 and rounded["mean_diff"] == pytest.approx(raw["mean_diff"])


def test_iman_davenport_matches_demsar():
    # Demšar (2006), section 3.2.2: four classifiers on 14 data sets, chi2_F = 9.28 -> F_F = 3.69, distributed
    # as F(3, 39), whose critical value at 0.05 is 2.85.
    f_stat, p = stats.iman_davenport(9.28, 14, 4)
    assert f_stat == pytest.approx(3.69, abs=0.005)
    assert sps.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.005) and p < 0.05
    # Friedman rows carry it: ranks always 1, 2, 3 over 4 datasets is perfect agreement -> F infinite, p 0
    same = pd.DataFrame({"a": [90, 80, 70, 60], "b": [85, 75, 65, 55], "c": [10, 20, 30, 40]})
    res = stats.friedman(same)
    assert res["f_statistic"] == math.inf and res["f_p_value"] == 0.0 and res["df"] == (2, 6)


def test_zero_by_construction_is_left_out_of_the_family_and_listed():
    # "copy" equals zero-shot in every run (as Tip-Adapter does on new classes); "better" is a real comparison
    df = fewshot_summary(
        {"zeroshot": lambda d: 50 + d, "copy": lambda d: 50 + d, "better": lambda d: 55 + d}, datasets=7
    )
    out = stats.compute_stats(df, {"reference_methods": ["zeroshot"], "bayesian": False})
    ex = out[out.test == "excluded"].set_index("method")
    assert "zero by construction" in ex.loc["copy", "note"]
    tests = out[out.test == "wilcoxon"]
    assert list(tests.method) == ["better"] and tests.iloc[0].min_p_adjusted == pytest.approx(1 / 64)


def test_bayesian_signed_rank_probabilities():
    pytest.importorskip("baycomp")
    better = stats.bayesian_signed_rank(np.arange(6) + 55.0, np.arange(6) + 50.0, rope=1.0, samples=2000, seed=0)
    assert sum(better.values()) == pytest.approx(1.0)
    assert better["prob_better"] > 0.9 and better["prob_worse"] == 0.0
    same = stats.bayesian_signed_rank([50, 60, 70.2], [50, 60, 70], rope=1.0, samples=2000, seed=0)
    # the prior's pseudo-observation sits at a zero difference (inside the ROPE): a stronger prior moves
    # probability from "better" to "equivalent"
    strong = stats.bayesian_signed_rank(np.arange(6) + 55.0, np.arange(6) + 50.0, 1.0, 2000, 0, prior=5.0)
    assert strong["prob_equivalent"] > better["prob_equivalent"] and strong["prob_better"] < better["prob_better"]
    assert same["prob_equivalent"] == pytest.approx(1.0)
    assert better == stats.bayesian_signed_rank(np.arange(6) + 55.0, np.arange(6) + 50.0, 1.0, 2000, 0)
