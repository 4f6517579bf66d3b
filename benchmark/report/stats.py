"""Summaries over seeds: mean, 95% confidence half-width from the t distribution, and
Welch's t-test for "not significantly worse than the best".

Half-width = t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation (none for
n = 1); that of the difference between two independent draws of a cell (two seeds) is
t_{0.975, n-1} * s * sqrt(2). Welch's two-sided t-test (unequal variances) on the two
cells' seeds; a cell is marked as tied with the best when p >= ``ALPHA`` (it needs n >= 2
on both sides, and two cells with zero variance are tied only when their means are equal).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95


def _t_spread(values) -> float | None:
    """t_{0.975, n-1} * s, or None for fewer than two values."""
    from scipy import stats
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) * float(values.std(ddof=1))


def mean_halfwidth(values) -> tuple[float, float | None]:
    """(mean, 95% half-width or None for a single value)."""
    spread = _t_spread(values)
    return float(np.mean(values)), None if spread is None else spread / math.sqrt(len(values))


def two_draw_halfwidth(values) -> float | None:
    """95% half-width of the difference between two independent draws from the distribution
    ``values`` sample (None for a single value)."""
    spread = _t_spread(values)
    return None if spread is None else spread * math.sqrt(2)


def welch_p(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test; None when either side has fewer than 2 values."""
    from scipy import stats
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # nearly equal seeds: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def tied_with_best(values, best) -> bool:
    p = welch_p(values, best)
    return p is not None and p >= ALPHA
