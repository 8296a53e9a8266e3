import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from noisefit_lib import stats


def test_t975_is_students_quantile():
    assert stats.t975(2) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t975(1000) == pytest.approx(1.962339, abs=1e-6)
    with pytest.raises(ValueError):
        stats.t975(0)


def test_seed_mean_matches_scipy_t_interval():
    values = [0.31, 0.35, 0.29, 0.40, 0.33]
    est = stats.seed_mean(values)
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert (est.low, est.high) == (pytest.approx(low), pytest.approx(high))
    assert est.n == 5 and est.unit == "seeds"
    one = stats.seed_mean([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.half_width)
    with pytest.raises(ValueError, match="non-empty"):
        stats.seed_mean([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.seed_mean([1.0, math.nan])


def test_paired_difference_matches_scipy_ttest_rel():
    a, b = [0.52, 0.49, 0.55, 0.51], [0.50, 0.50, 0.51, 0.47]
    est = stats.paired_difference(a, b)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert est.mean == pytest.approx(0.0225)
    assert (est.low, est.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_item_bootstrap_describes_items():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 400).astype(float)
    b = rng.integers(0, 2, 400).astype(float)
    est = stats.item_bootstrap(a, b, rng=np.random.default_rng(1))
    assert est.unit == "items" and est.n == 400
    assert est.low < est.mean < est.high
    half = 1.96 * np.std(a - b, ddof=1) / math.sqrt(400)  # the normal approximation
    assert est.half_width == pytest.approx(half, rel=0.1)


def test_wilson_matches_scipy():
    est = stats.wilson(7, 20)
    ci = scipy_stats.binomtest(7, 20).proportion_ci(0.95, method="wilson")
    assert (est.low, est.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert stats.wilson(0, 10).low == 0.0 and stats.wilson(10, 10).high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.wilson(3, 2)


def test_estimate_text():
    assert stats.Estimate(0.02134, -0.15487, 0.19712, 3).text() == "+0.0213 [-0.155, +0.197]"
    assert stats.Estimate(0.5, math.nan, math.nan, 1).text() == "+0.5 [n/a, n/a]"


def _runs():
    rows = []
    for seed in range(3):
        rows.append({"method": "sft", "seed": seed, "noise": 0.2, "acc": 0.50 + 0.01 * seed})
        rows.append({"method": "nf", "seed": seed, "noise": 0.2, "acc": 0.53 + 0.02 * seed})
        rows.append({"method": "sft", "seed": seed, "noise": 0.0, "acc": 0.60})
        rows.append({"method": "nf", "seed": seed, "noise": 0.0, "acc": 0.60 + 0.01 * seed})
    return pd.DataFrame(rows)


def test_summarise_groups_in_order():
    table = stats.summarise(_runs(), "acc", by=["noise", "method"])
    assert list(table.columns) == ["noise", "method", "mean", "low", "high", "n"]
    assert table[["noise", "method"]].values.tolist() == [
        [0.2, "sft"],
        [0.2, "nf"],
        [0.0, "sft"],
        [0.0, "nf"],
    ]
    assert table["mean"].tolist()[:2] == [pytest.approx(0.51), pytest.approx(0.55)]
    assert (table["n"] == 3).all()


def test_paired_effects_pairs_by_seed():
    effects = stats.paired_effects(_runs(), "acc", "sft", by=["noise"])
    assert effects[["noise", "method", "baseline"]].values.tolist() == [
        [0.2, "nf", "sft"],
        [0.0, "nf", "sft"],
    ]
    noisy = stats.estimate_of(effects.iloc[0])
    expected = stats.paired_difference([0.53, 0.55, 0.57], [0.50, 0.51, 0.52])
    assert noisy.mean == pytest.approx(expected.mean) and noisy.low == pytest.approx(expected.low)


def test_paired_effects_refuses_unpaired_seeds():
    runs = _runs()
    runs = runs[~((runs.method == "nf") & (runs.seed == 2))]
    with pytest.raises(ValueError, match="nothing to pair with"):
        stats.paired_effects(runs, "acc", "sft", by=["noise"])
    with pytest.raises(ValueError, match="no rows of baseline 'base'"):
        stats.paired_effects(_runs(), "acc", "base", by=["noise"])
    with pytest.raises(KeyError, match="lacks column"):
        stats.paired_effects(_runs(), "loss", "sft")


def test_ratio_text_shows_a_log_ratio_on_the_ratio_scale():
    est = stats.Estimate(math.log(1.23), math.log(1.2), math.log(1.26), 4)
    assert est.text() != est.ratio_text() == "1.23x [1.2, 1.26]"
    assert stats.Estimate(math.log(2.0), math.nan, math.nan, 1).ratio_text() == "2x"


def test_grouping_columns_may_not_clash_with_the_result():
    runs = _runs().rename(columns={"noise": "n"})
    with pytest.raises(ValueError, match="rename the grouping column"):
        stats.summarise(runs, "acc", by=["n", "method"])
