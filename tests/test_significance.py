"""McNemar and the bootstrap CI agree with statsmodels and scipy on fixtures."""
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import bootstrap
from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar

from evalstack.evaluation.significance import accuracy_intervals, bootstrap_means, mcnemar


def _paired(both: int, only_first: int, only_second: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    first = [1] * both + [1] * only_first + [0] * only_second + [0] * neither
    second = [1] * both + [0] * only_first + [1] * only_second + [0] * neither
    return np.asarray(first, bool), np.asarray(second, bool)


@pytest.mark.parametrize(
    "cells",
    [(50, 3, 9, 10), (40, 0, 0, 5), (10, 7, 7, 3), (30, 1, 12, 2), (200, 30, 12, 8), (500, 90, 60, 40)],
)
def test_mcnemar_agrees_with_statsmodels(cells):
    both, b, c, neither = cells
    result = mcnemar(*_paired(*cells))
    assert (result.only_first, result.only_second) == (b, c)
    exact = b + c < 25
    assert result.method == ("exact" if exact else "chi2")
    table = [[both, b], [c, neither]]
    expected = statsmodels_mcnemar(table, exact=exact, correction=True)
    assert result.p_value == expected.pvalue  # the same bits: the functions scipy.stats calls (significance.py)
    assert result.statistic == expected.statistic


def test_mcnemars_p_values_are_scipy_stats_own_without_importing_it():
    from scipy.special import chdtrc
    from scipy.stats import binom, chi2

    from evalstack.evaluation.significance import binomial_cdf_half, chi_square_sf_1

    # Every (k, n) the exact test sees (n below 25, k up to n) and far beyond, bit for bit.
    pairs = [(k, n) for n in range(0, 400) for k in range(0, n + 1)]
    ours = np.array([binomial_cdf_half(k, n) for k, n in pairs])
    ks, ns = np.array(pairs).T
    assert np.array_equal(ours, binom.cdf(ks, ns, 0.5))
    assert binomial_cdf_half(-1, 5) == binom.cdf(-1, 5, 0.5) == 0.0
    # Every continuity-corrected statistic (|b - c| - 1)² / (b + c) for b + c from 1 to 2,000.
    b, c = np.meshgrid(np.arange(0, 2001), np.arange(0, 2001))
    seen = (b + c >= 1) & (b + c <= 2000)
    statistics = np.unique((np.abs(b - c)[seen] - 1.0) ** 2 / (b + c)[seen])
    assert statistics[0] == 0.0 and len(statistics) > 500_000
    reference = chi2.sf(statistics, 1)
    assert np.array_equal(chdtrc(1, statistics), reference)  # the ufunc chi_square_sf_1 calls, on all of them
    assert [chi_square_sf_1(x) for x in statistics[::997]] == list(reference[::997])  # and the function itself
    # compare's modules, as the stage imports them
    code = ("import sys; import evalstack.evaluation.comparison, evalstack.reporting.comparison_report; "
            "print('scipy.stats' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_mcnemar_sees_a_real_difference_and_no_difference():
    assert mcnemar(*_paired(100, 20, 2, 10)).p_value < 0.001
    assert mcnemar(*_paired(100, 5, 5, 10)).p_value == 1.0


def test_percentile_ci_agrees_with_scipy_bootstrap():
    correct = np.random.default_rng(7).random(300) < 0.8
    low, high = accuracy_intervals(correct[None, :], n_resamples=20000, seed=1)
    reference = bootstrap(
        (correct.astype(float),), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    # Different random draws: the two agree to Monte Carlo precision (±0.005 here), not bit for bit.
    assert low[0] == pytest.approx(reference.low, abs=0.006)
    assert high[0] == pytest.approx(reference.high, abs=0.006)
    assert low[0] < correct.mean() < high[0]


def test_bootstrap_is_seeded_paired_and_bounded():
    correct = np.random.default_rng(0).random((3, 50)) < 0.7
    a = bootstrap_means(correct, 500, seed=3)
    b = bootstrap_means(correct, 500, seed=3, block=64)  # blocking changes memory, not the draws
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 500)
    # Paired: identical models get identical resampled accuracies.
    twins = bootstrap_means(np.stack([correct[0], correct[0]]), 200, seed=1)
    np.testing.assert_array_equal(twins[0], twins[1])
    perfect_low, perfect_high = accuracy_intervals(np.ones((1, 20)), 100, seed=0)
    assert perfect_low[0] == perfect_high[0] == 1.0
