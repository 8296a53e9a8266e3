"""The Mahalanobis detector and its metrics against the official code.

Source: ``pokaxpoka/deep_Mahalanobis_detector`` at commit 90c2105: ``sample_estimator`` (class
means and the shared covariance's precision), ``get_Mahalanobis_score`` (the score after input
pre-processing of magnitude 0, 0.005 and 0.01) and ``mle_batch`` (LID) of ``lib_generation.py``,
and ``get_curve`` (TNR at 95 % TPR) of ``calculate_log.py``, run once outside this repository on
CPU (its ``.cuda()`` calls made no-ops) on the seeded inputs of the fixture's recipe. The official
code computes in float32, hence the tolerances. The fixture holds the recipe and the outputs.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from noisefit_lib import metrics, ood

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "mahalanobis_reference.json").read_text()
)


def _inputs():
    model = ood.SmallCNN(3, generator=torch.Generator().manual_seed(0), widths=(4, 6), hidden=5)
    x_train = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_test = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return model.eval(), x_train, torch.arange(60) % 3, x_test


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_class_gaussians_match_sample_estimator(layer):
    model, x_train, y_train, _ = _inputs()
    with torch.no_grad():
        features = model.layer_features(x_train, layer)
    gaussians = ood.fit_class_gaussians(features, y_train, 3)
    np.testing.assert_allclose(gaussians.means, FIXTURE["means"][layer], rtol=1e-5, atol=1e-6)
    official = np.array(FIXTURE["precision"][layer])
    np.testing.assert_allclose(
        gaussians.precision, official, rtol=1e-3, atol=1e-3 * abs(official).max()
    )


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("magnitude", [0.0, 0.005, 0.01])
def test_preprocessed_scores_match_get_mahalanobis_score(layer, magnitude):
    model, x_train, y_train, x_test = _inputs()
    with torch.no_grad():
        gaussians = ood.fit_class_gaussians(model.layer_features(x_train, layer), y_train, 3)

    def features(x):
        return model.layer_features(x, layer)

    x_hat = ood.preprocess(x_test, features, gaussians, magnitude)
    with torch.no_grad():
        scores = ood.mahalanobis_score(features(x_hat), gaussians)
    official = np.array(FIXTURE["scores"][f"{layer}/{magnitude}"])
    np.testing.assert_allclose(scores, official, rtol=1e-4, atol=1e-4 * abs(official).max())


@pytest.mark.parametrize("case", range(3))
def test_tnr_at_95_tpr_matches_get_curve(case):
    spec = FIXTURE["tnr_cases"][case]
    assert metrics.tnr_at_tpr(spec["known"], spec["novel"]) == pytest.approx(spec["tnr"], abs=1e-12)


def test_lid_matches_mle_batch():
    data = torch.tensor(FIXTURE["lid_data"])
    lid = ood.lid_scores(data[:20], data, k=10)
    np.testing.assert_allclose(lid, FIXTURE["lid_k10"], rtol=1e-5)
