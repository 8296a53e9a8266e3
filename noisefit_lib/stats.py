"""Confidence intervals for small numbers of seeds or repeated measurements.

Explained in: book/running.md (Reproducibility). Used wherever a chapter reports mean ± CI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 95 % quantiles of Student's t, t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95 % interval with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.4 / df  # within 0.002 for df > 30


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t-interval; the half-width is NaN for one value."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), t975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)


def paired_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired seeds and the half-width of its 95 % t-interval."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples need equal shapes, got {a_arr.shape} and {b_arr.shape}")
    return mean_ci(a_arr - b_arr)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a - b)`` over paired samples.

    Args:
        a: one metric per seed, shape (S,).
        b: the same metric for the other method, paired with ``a`` by index.
        rng: the generator that draws the resamples.
        n_boot: number of resamples.
        level: coverage of the interval.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.ndim != 1 or diff.size < 2:
        raise ValueError("paired_bootstrap_ci needs two 1-D samples of at least 2 values")
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
