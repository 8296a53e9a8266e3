"""Intervals, and the book's one convention for what they are taken over.

**The unit of replication is the training run.** A chapter that compares methods trains each of
them under several seeds; a method's score is one number per seed, and the interval of an
effect is a t-interval over seeds of the *paired* differences (same seed = same data, same
initialisation, same batches, so the pairing removes what the methods share). Item-level
resampling (:func:`item_bootstrap`) describes *one fixed model* on its test set and says so in
its :attr:`Estimate.unit`; it is never evidence about a training method. :func:`wilson` is for
one proportion of independent trials.

Tidy tables: :func:`summarise` gives the mean and interval of a value per group, and
:func:`paired_effects` the paired effect of each method against a baseline, both from a
DataFrame with one row per (method, seed, ...).

Explained in: book/contributing.md (Results and verdicts). Used by every chapter that reports an
interval; :mod:`noisefit_lib.verdicts` turns an :class:`Estimate` into a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

SEEDS = "seeds"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval ``[low, high]`` over ``n`` units of ``unit``.

    With a single unit the interval is ``[nan, nan]``: one seed gives no interval.
    """

    mean: float
    low: float
    high: float
    n: int
    unit: str = SEEDS

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN without an interval)."""
        return (self.high - self.low) / 2

    def text(self, digits: int = 3) -> str:
        """``"+0.021 [-0.155, +0.197]"``, each number to ``digits`` significant digits."""

        def signed(x: float) -> str:
            if math.isnan(x):
                return "n/a"
            return f"{float(f'{x:.{digits}g}'):+g}" if x != 0 else "0"

        return f"{signed(self.mean)} [{signed(self.low)}, {signed(self.high)}]"

    def ratio_text(self, digits: int = 3) -> str:
        """For an estimate of a *log* ratio: ``"1.23x [1.2, 1.26]"`` (with its interval, if any).

        Ratios (speed-ups, growth factors) are averaged and judged on the log scale, where a
        paired t-interval is symmetric; this shows them back on the ratio scale.
        """
        text = f"{math.exp(self.mean):.{digits}g}x"
        if math.isnan(self.low) or math.isnan(self.high):
            return text
        return f"{text} [{math.exp(self.low):.{digits}g}, {math.exp(self.high):.{digits}g}]"

    def as_dict(self, prefix: str = "") -> dict[str, float | int | str]:
        """Plain fields for a results table row: ``mean``, ``low``, ``high``, ``n``."""
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}low": self.low,
            f"{prefix}high": self.high,
            f"{prefix}n": self.n,
        }


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95 % interval with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    return float(scipy_stats.t.ppf(0.975, df))


def _as_1d(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} needs a non-empty 1-D sequence, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} got non-finite values: {x.tolist()}")
    return x


def seed_mean(values: Sequence[float]) -> Estimate:
    """Mean over seeds (one value per training run) with its 95 % t-interval."""
    x = _as_1d(values, "seed_mean")
    if x.size == 1:
        return Estimate(float(x[0]), math.nan, math.nan, 1)
    mean = float(x.mean())
    half = t975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Estimate(mean, mean - half, mean + half, int(x.size))


def paired_difference(treatment: Sequence[float], baseline: Sequence[float]) -> Estimate:
    """Mean of ``treatment - baseline`` over seeds, paired by index, with its 95 % t-interval.

    Both sequences hold one value per seed, in the same seed order.
    """
    a = _as_1d(treatment, "paired_difference")
    b = _as_1d(baseline, "paired_difference")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    return seed_mean(a - b)


def item_bootstrap(
    treatment: Sequence[float],
    baseline: Sequence[float],
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
) -> Estimate:
    """Percentile bootstrap over test items of ``mean(treatment - baseline)``, paired by item.

    This describes two *fixed* models on one test set: it says how much the gap would move with
    other test items, not with another training run. Its unit says so.
    """
    diff = _as_1d(treatment, "item_bootstrap") - _as_1d(baseline, "item_bootstrap")
    if diff.size < 2:
        raise ValueError("item_bootstrap needs at least 2 items")
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Estimate(float(diff.mean()), float(low), float(high), int(diff.size), "items")


def wilson(successes: int, n: int) -> Estimate:
    """A proportion of ``n`` independent trials with its 95 % Wilson score interval."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, "trials")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"the table lacks column(s) {missing}; it has {list(frame.columns)}")


def _check_free(columns: Sequence[str]) -> None:
    """Refuse grouping columns that the result's own columns would overwrite."""
    taken = sorted(set(columns) & {"mean", "low", "high", "n", "baseline"})
    if taken:
        raise ValueError(f"rename the grouping column(s) {taken}: the result uses those names")


def summarise(frame: pd.DataFrame, value: str, by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Mean and 95 % t-interval over seeds of ``value`` per group of ``by``.

    ``frame`` has one row per training run (and whatever else ``by`` names). The result has the
    ``by`` columns, then ``mean``, ``low``, ``high`` and ``n`` (seeds), groups in first-seen order.
    """
    by = list(by)
    _check_columns(frame, [*by, value])
    _check_free(by)
    rows = []
    for key, group in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), **seed_mean(group[value]).as_dict()})
    return pd.DataFrame(rows)


def paired_effects(
    frame: pd.DataFrame,
    value: str,
    baseline: str,
    *,
    method: str = "method",
    pair: str = "seed",
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Effect of every method against ``baseline`` on ``value``, paired by ``pair`` (the seed).

    Within each group of ``by`` (a condition, a size, ...), each method other than ``baseline``
    is matched seed by seed with the baseline; the result has the ``by`` columns, ``method``,
    ``baseline``, then ``mean``, ``low``, ``high`` and ``n`` of the paired difference.

    Raises:
        ValueError: when a method's seeds differ from the baseline's (nothing to pair with).
    """
    by = list(by)
    _check_columns(frame, [*by, method, pair, value])
    _check_free([*by, method])
    groups = frame.groupby(by, sort=False) if by else [((), frame)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(by, key, strict=True))
        base = group[group[method] == baseline].set_index(pair)[value]
        if base.empty:
            raise ValueError(f"no rows of baseline {baseline!r} in group {labels or 'all'}")
        if not base.index.is_unique:
            raise ValueError(f"baseline {baseline!r} has repeated {pair} values in {labels}")
        for name, rows_of_method in group.groupby(method, sort=False):
            if name == baseline:
                continue
            treated = rows_of_method.set_index(pair)[value]
            if sorted(treated.index) != sorted(base.index):
                raise ValueError(
                    f"{name!r} has {pair}s {sorted(treated.index)} but baseline {baseline!r} "
                    f"has {sorted(base.index)} in group {labels or 'all'}: nothing to pair with"
                )
            effect = paired_difference(treated.sort_index(), base.sort_index())
            rows.append({**labels, method: name, "baseline": baseline, **effect.as_dict()})
    return pd.DataFrame(rows)


def estimate_of(row: pd.Series | dict) -> Estimate:
    """The :class:`Estimate` in a row of :func:`summarise` or :func:`paired_effects`."""
    return Estimate(float(row["mean"]), float(row["low"]), float(row["high"]), int(row["n"]))
