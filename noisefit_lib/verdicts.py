"""The book's one verdict rule: what a 95 % interval says about a paper's claim.

A claim has an expected sign (the paper says the effect is positive, or negative) and a
*smallest effect of interest* ``sesoi`` (> 0) that the chapter states and justifies: the size
below which a reader would not care. Given the interval ``[low, high]`` of the effect (over
training seeds, see :mod:`noisefit_lib.stats`):

==========================  ================================================================
``reproduced``              the interval excludes zero on the paper's side
``contradicted``            it excludes zero on the other side
``no detectable effect``    it includes zero and lies inside ``[-sesoi, +sesoi]``
``inconclusive``            it includes zero and is wider than that (or there is no interval)
==========================  ================================================================

An exact or numerical check of a theorem is ``holds`` or ``fails`` (:func:`check`). A claim the
chapter could not test (a saturated task, a run that is not committed) is
``not tested (<reason>)`` (:func:`not_tested`). Nothing else is a verdict: :func:`is_verdict`
decides, :func:`noisefit_lib.report.glue` refuses any other value under a key that names a
verdict, and a test scans every chapter.

Explained in: book/contributing.md (Results and verdicts). Used by every chapter.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import pandas as pd

from noisefit_lib.stats import Estimate, estimate_of

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
NO_DETECTABLE_EFFECT = "no detectable effect"
INCONCLUSIVE = "inconclusive"
HOLDS = "holds"
FAILS = "fails"
VERDICTS = (REPRODUCED, CONTRADICTED, NO_DETECTABLE_EFFECT, INCONCLUSIVE)
CHECKS = (HOLDS, FAILS)
_NOT_TESTED = re.compile(r"^not tested \([^()]+\)$")

Direction = Literal["increase", "decrease"]
DIRECTIONS = ("increase", "decrease")


def judge(effect: Estimate, *, expected: Direction, sesoi: float) -> str:
    """The verdict on a claim that the effect goes in direction ``expected``.

    Args:
        effect: the effect's estimate and 95 % interval (e.g. from
            :func:`noisefit_lib.stats.paired_difference`).
        expected: ``"increase"`` when the paper says the effect is positive, ``"decrease"``
            when it says negative.
        sesoi: the smallest effect of interest, in the effect's units (> 0).
    """
    if expected not in DIRECTIONS:
        raise ValueError(f"expected must be one of {DIRECTIONS}, got {expected!r}")
    if not sesoi > 0:
        raise ValueError(f"the smallest effect of interest must be > 0, got {sesoi!r}")
    low, high = effect.low, effect.high
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE  # one seed: no interval, no verdict
    if low > high:
        raise ValueError(f"interval is reversed: [{low}, {high}]")
    if low > 0:
        return REPRODUCED if expected == "increase" else CONTRADICTED
    if high < 0:
        return REPRODUCED if expected == "decrease" else CONTRADICTED
    if -sesoi <= low and high <= sesoi:
        return NO_DETECTABLE_EFFECT
    return INCONCLUSIVE


def judge_rows(frame: pd.DataFrame, *, expected: Direction, sesoi: float) -> pd.Series:
    """:func:`judge` for every row of a :func:`noisefit_lib.stats.paired_effects` table."""
    return frame.apply(
        lambda row: judge(estimate_of(row), expected=expected, sesoi=sesoi), axis=1
    ).rename("verdict")


def check(condition: bool) -> str:
    """``holds`` or ``fails``: the verdict of an exact or numerical check of a theorem."""
    return HOLDS if bool(condition) else FAILS


def not_tested(reason: str) -> str:
    """``not tested (<reason>)``: for a claim the chapter could not put to a test."""
    reason = reason.strip()
    if not reason or "(" in reason or ")" in reason:
        raise ValueError(f"give a short reason without parentheses, got {reason!r}")
    return f"not tested ({reason})"


def is_verdict(text: str) -> bool:
    """Whether ``text`` belongs to the book's verdict vocabulary."""
    return text in VERDICTS or text in CHECKS or bool(_NOT_TESTED.match(text))


def is_verdict_key(key: str) -> bool:
    """Whether a glue key names a verdict (it contains ``verdict``)."""
    return "verdict" in key.lower()
