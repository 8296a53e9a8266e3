"""APS/RAPS conformal sets against the official code.

Source: ``aangelopoulos/conformal_classification`` at commit 881eba9: the calibration scores of
``giq`` (randomised, zero sets allowed), the quantile of ``conformal_calibration_logits``
(``1 - alpha``, 'higher') and the sets of ``gcq`` (randomised, no zero sets), run once outside
this repository on seeded inputs. The official code draws its uniforms from numpy's global
generator, one per calibration example and then one per test example; seeding it reproduces
them, so the comparison is draw by draw. The fixture holds the recipe and the official outputs.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from noisefit_lib import metrics

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "raps_reference.json").read_text())


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"C{c['n_classes']}s{c['seed']}")
def test_raps_scores_threshold_and_sets_match_the_official_code(case):
    rng = np.random.default_rng(case["seed"])
    n_cal, n_test, n_classes = case["n_cal"], case["n_test"], case["n_classes"]
    logits_cal = 3 * rng.standard_normal((n_cal, n_classes))
    y_cal = np.argmax(logits_cal + 2 * rng.standard_normal((n_cal, n_classes)), axis=1)
    logits_test = 3 * rng.standard_normal((n_test, n_classes))
    uniforms = np.random.RandomState(case["seed"]).random(n_cal + n_test)
    penalties = metrics.raps_penalties(n_classes, case["kreg"], case["lam"])
    scores = metrics.raps_scores(_softmax(logits_cal), y_cal, uniforms[:n_cal], penalties)
    np.testing.assert_allclose(scores, case["scores"], rtol=1e-12, atol=1e-12)
    tau = metrics.raps_threshold(scores, case["alpha"])
    assert tau == pytest.approx(case["qhat"], rel=1e-12)
    sets = metrics.raps_sets(_softmax(logits_test), tau, uniforms[n_cal:], penalties)
    assert [sorted(np.flatnonzero(row).tolist()) for row in sets] == case["sets"]
