import math

import pandas as pd
import pytest

from noisefit_lib import stats, verdicts


def est(low, high):
    return stats.Estimate((low + high) / 2, low, high, 3)


@pytest.mark.parametrize(
    ("low", "high", "expected", "verdict"),
    [
        (0.01, 0.05, "increase", "reproduced"),
        (0.01, 0.05, "decrease", "contradicted"),
        (-0.05, -0.01, "decrease", "reproduced"),
        (-0.05, -0.01, "increase", "contradicted"),
        (-0.01, 0.015, "increase", "no detectable effect"),
        (-0.02, 0.02, "decrease", "no detectable effect"),  # the bounds belong inside
        (-0.155, 0.197, "increase", "inconclusive"),  # chapter 5's old "direction only"
        (-0.001, 0.03, "increase", "inconclusive"),
        (0.0, 0.01, "increase", "no detectable effect"),  # zero included
    ],
)
def test_judge(low, high, expected, verdict):
    assert verdicts.judge(est(low, high), expected=expected, sesoi=0.02) == verdict


def test_judge_without_an_interval_is_inconclusive():
    one_seed = stats.Estimate(0.3, math.nan, math.nan, 1)
    assert verdicts.judge(one_seed, expected="increase", sesoi=0.1) == "inconclusive"


def test_judge_refuses_bad_arguments():
    with pytest.raises(ValueError, match="expected must be one of"):
        verdicts.judge(est(0, 1), expected="up", sesoi=0.1)
    with pytest.raises(ValueError, match="smallest effect of interest"):
        verdicts.judge(est(0, 1), expected="increase", sesoi=0)
    with pytest.raises(ValueError, match="reversed"):
        verdicts.judge(stats.Estimate(0, 1, -1, 3), expected="increase", sesoi=0.1)


def test_judge_rows():
    effects = pd.DataFrame(
        [est(0.01, 0.03).as_dict(), est(-0.5, 0.5).as_dict(), est(-0.3, -0.2).as_dict()]
    )
    assert verdicts.judge_rows(effects, expected="increase", sesoi=0.1).tolist() == [
        "reproduced",
        "inconclusive",
        "contradicted",
    ]


def test_check_and_not_tested():
    assert verdicts.check(True) == "holds" and verdicts.check(False) == "fails"
    assert verdicts.not_tested("ceiling") == "not tested (ceiling)"
    with pytest.raises(ValueError):
        verdicts.not_tested("")


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("reproduced", True),
        ("no detectable effect", True),
        ("holds", True),
        ("not tested (ceiling)", True),
        ("direction only", False),
        ("not at this scale", False),
        ("not reproduced on this CPU", False),
        ("Reproduced", False),
        ("not tested", False),
    ],
)
def test_vocabulary(text, valid):
    assert verdicts.is_verdict(text) is valid
