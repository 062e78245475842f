"""Is a difference between models real? Paired bootstrap CIs and McNemar's test (pure functions).

Every model is scored on the same items, so both tools are paired: the
bootstrap resamples items (one set of resamples for all models, so their
intervals and the differences between them come from the same draws), and
McNemar looks only at the items where exactly one of two models is right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, chi2

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
        p_value = min(1.0, 2.0 * float(binom.cdf(smaller, discordant, 0.5)))
        return McNemarResult(b, c, float(smaller), p_value, "exact")
    statistic = (abs(b - c) - 1) ** 2 / discordant
    return McNemarResult(b, c, float(statistic), float(chi2.sf(statistic, 1)), "chi2")
