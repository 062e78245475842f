"""Is a difference between models real? Paired bootstrap CIs and McNemar's test (pure functions).

Every model is scored on the same items, so both tools are paired: the
bootstrap resamples items (one set of resamples for all models, so their
intervals and the differences between them come from the same draws), and
McNemar looks only at the items where exactly one of two models is right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The two functions scipy.stats.binom.cdf and chi2.sf evaluate (scipy 1.17: `binom_gen._cdf` is
# `_binom_cdf(floor(k), n, p)` and `chi2_gen._sf` is `chdtrc(df, x)`), called directly: importing scipy.stats
# costs ~0.4 s in every compare process (its import formats ~600 docstrings), and compare needs just these two.
# `_binom_cdf` is scipy's own ufunc, not `scipy.special.bdtr`, whose cephes code differs from it in the last
# bits for 113 of the 324 (k, n) below n = 25. tests/test_significance.py holds both to scipy.stats on
# every (k, n) the exact test can see and on every chi-square statistic up to 2,000 discordant pairs.
from scipy.special import chdtrc
from scipy.special._ufuncs import _binom_cdf

DEFAULT_RESAMPLES = 2000
EXACT_BELOW = 25  # discordant pairs below which McNemar uses the exact binomial test (as statsmodels advises)


def bootstrap_means(values: np.ndarray, n_resamples: int, seed: int, block: int = 250) -> np.ndarray:
    """Means of `values` (models × items) over item resamples shared by all models: (models, resamples)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_items = values.shape[1]
    if n_items == 0:
        raise ValueError("no items to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.empty((values.shape[0], n_resamples))
    for start in range(0, n_resamples, block):  # bounded memory: models × block × items
        stop = min(start + block, n_resamples)
        rows = rng.integers(0, n_items, size=(stop - start, n_items))
        means[:, start:stop] = values[:, rows].mean(axis=2)
    return means


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along the last axis (the same rule scipy.stats.bootstrap's 'percentile' uses)."""
    tail = (1 - level) / 2 * 100
    return np.percentile(samples, tail, axis=-1), np.percentile(samples, 100 - tail, axis=-1)


def accuracy_intervals(
    correct: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Per-model (low, high) bootstrap CI of accuracy; `correct` is models × items of 0/1."""
    return percentile_interval(bootstrap_means(correct, n_resamples, seed), level)


@dataclass(frozen=True)
class McNemarResult:
    only_first: int  # items the first model gets right and the second wrong
    only_second: int
    statistic: float
    p_value: float
    method: str  # "exact" (binomial) or "chi2" (with continuity correction)


def mcnemar(first_correct: np.ndarray, second_correct: np.ndarray, exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's test on paired correctness; exact binomial for few discordant pairs."""
    first, second = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if first.shape != second.shape:
        raise ValueError(f"paired arrays differ in shape: {first.shape} vs {second.shape}")
    b, c = int(np.sum(first & ~second)), int(np.sum(~first & second))
    discordant = b + c
    if discordant < exact_below:
        smaller = min(b, c)
        p_value = min(1.0, 2.0 * binomial_cdf_half(smaller, discordant))
        return McNemarResult(b, c, float(smaller), p_value, "exact")
    statistic = (abs(b - c) - 1) ** 2 / discordant
    return McNemarResult(b, c, float(statistic), chi_square_sf_1(statistic), "chi2")


def binomial_cdf_half(k: int, n: int) -> float:
    """scipy.stats.binom.cdf(k, n, 0.5) for integers k and n >= 0: 0 below the support and 1 from its end on,
    as scipy answers there without calling its ufunc (which gives NaN below)."""
    if k < 0:
        return 0.0
    return 1.0 if k >= n else float(_binom_cdf(k, n, 0.5))


def chi_square_sf_1(statistic: float) -> float:
    """scipy.stats.chi2.sf(statistic, 1) for statistic >= 0 (at 0 both give 1)."""
    return float(chdtrc(1, statistic))
