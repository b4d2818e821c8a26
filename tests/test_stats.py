"""Each statistic against textbook or hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vlprompt import stats


def test_wilcoxon_matches_the_textbook_example():
    # Hollander & Wolfe (1999), Table 3.1 (Hamilton depression scale, before/after, n = 9): T+ = 5,
    # exact two-sided p = 0.039 (scipy's documented example of the same data).
    x = np.array([1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30])
    y = np.array([0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29])
    res = stats.compare(y, x)
    assert res["statistic"] == 5.0
    assert res["p_value"] == pytest.approx(0.0390625)
    assert (res["wins"], res["ties"], res["losses"]) == (2, 0, 7)


def test_rank_biserial_by_hand():
    # differences 1, -2, 3, 4: ranks 1, 2, 3, 4; R+ = 8, R- = 2 -> (8 - 2) / 10
    assert stats.rank_biserial([1, -2, 3, 4]) == pytest.approx(0.6)
    assert stats.rank_biserial([0, 0]) == 0.0


def test_all_equal_scores_give_p_one_and_ties():
    res = stats.compare([50, 60, 70], [50, 60, 70])
    assert res["p_value"] == 1.0 and res["ties"] == 3


def test_tie_tolerance_counts_small_differences_as_ties():
    res = stats.compare([50.2, 61, 70], [50, 60, 70], tie_tolerance=0.5)
    assert (res["wins"], res["ties"], res["losses"]) == (1, 2, 0)


def test_friedman_matches_scipy_on_a_known_example():
    # Demsar (2006) style table: 4 datasets x 3 methods with ranks always 1,2,3 -> chi2 = n(k-1) = 8
    scores = pd.DataFrame({"a": [90, 80, 70, 60], "b": [85, 75, 65, 55], "c": [10, 20, 30, 40]})
    res = stats.friedman(scores)
    assert res["statistic"] == pytest.approx(8.0)
    assert res["p_value"] == pytest.approx(sps.chi2.sf(8.0, 2))


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    x = [60.0, 62.0, 65.0]
    lo, hi = stats.bootstrap_ci(x, 2000, seed=1)
    assert lo <= np.mean(x) <= hi and lo >= 60 and hi <= 65
    assert (lo, hi) == stats.bootstrap_ci(x, 2000, seed=1)
    assert stats.bootstrap_ci([5.0], 2000) == (5.0, 5.0)


def test_holm_adjustment_over_the_family_by_hand():
    # two methods against one reference over 6 datasets: both beat it everywhere -> p = 0.03125 each;
    # Holm: sorted p * (m, m-1) -> 0.0625 and 0.03125, made monotone -> both 0.0625
    rows = []
    for d in range(6):
        for seed in (1, 2):
            for m, v in (("zeroshot", 50 + d), ("a", 55 + d), ("b", 57 + 2 * d)):
                rows.append({"method": m, "protocol": "fewshot", "dataset": f"d{d}", "shots": 4, "seed": seed,
                             "base_acc": math.nan, "new_acc": math.nan, "hm": math.nan, "all_acc": v})
    out = stats.compute_stats(pd.DataFrame(rows), {"reference_methods": ["zeroshot"]})
    tests = out[out.test == "wilcoxon"].set_index("method")
    assert tests.loc["a", "p_value"] == pytest.approx(0.03125)
    assert tests.loc["a", "p_adjusted"] == pytest.approx(0.0625)
    assert tests.loc["b", "p_adjusted"] == pytest.approx(0.0625)
    assert not tests.significant.any()
    fr = out[out.test == "friedman"].iloc[0]
    assert fr.statistic == pytest.approx(12.0)  # ranks always 1,2,3 over 6 datasets: n(k-1) = 12


def test_cell_summary_mean_std_and_ci():
    df = pd.DataFrame({"method": "m", "dataset": "d", "shots": 1, "seed": [1, 2, 3], "base_acc": [60.0, 62, 64],
                       "new_acc": math.nan, "hm": math.nan, "all_acc": math.nan})
    cell = stats.cell_summary(df).iloc[0]
    assert cell.base_acc_mean == 62 and cell.base_acc_std == pytest.approx(2.0)
    assert cell.base_acc_ci_low <= 62 <= cell.base_acc_ci_high
    assert math.isnan(cell.new_acc_mean)
