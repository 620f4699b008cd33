"""pass@k against brute-force enumeration of k-subsets; Kendall's tau-b against scipy, ties
included."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from lingjax.evaluate.stats import kendall_tau, mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k", [(5, 0, 1), (5, 2, 1), (6, 2, 3), (7, 3, 5), (4, 4, 2), (8, 1, 8)]
)
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_mean_and_bad_counts():
    assert mean_pass_at_k([(10, 0), (10, 10)], k=3) == pytest.approx(0.5)
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    for bad in [(5, 6, 1), (5, 1, 0), (5, 1, 6)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*bad)


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 30):
        x = rng.integers(0, 4, n).astype(float)  # many ties
        y = x + rng.integers(-2, 3, n)
        want = stats.kendalltau(x, y).statistic
        got = kendall_tau(x, y)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])
