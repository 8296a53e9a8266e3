"""NMTune's loss and feature spectrum against the official code.

Source: ``Hhhhhhao/Noisy-Model-Learning`` at commit f249dce: the loss lines of ``nml_tune`` in
``src/models/nml_tune.py`` and the preprocessing and ``TruncatedSVD`` of ``eval_single_dataset``
in ``src/models/svd.py``, run once outside this repository on seeded inputs. The fixture holds
only the recipe of those inputs and the official outputs (loss terms, the gradient with respect
to the tuned features, singular values); the official source is not copied here.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from noisefit_lib import noisy_pretraining as npt

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "nmtune_reference.json").read_text())


def _loss_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, c, scale = case["batch"], case["dim"], case["classes"], case["scale"]
    feats = scale * torch.randn(2 * b, d, generator=gen)
    tuned = (scale * torch.randn(2 * b, d, generator=gen)).requires_grad_()
    head_w = torch.randn(c, d, generator=gen) * 0.3
    head_b = torch.randn(c, generator=gen) * 0.1
    labels = torch.randint(c, (b,), generator=gen)
    return feats, tuned, head_w, head_b, labels


@pytest.mark.parametrize("case", FIXTURE["loss_cases"], ids=lambda c: f"B{c['batch']}D{c['dim']}")
def test_nmtune_loss_matches_the_official_code(case):
    feats, tuned, head_w, head_b, labels = _loss_inputs(case)
    weights = case["weights"]
    terms = npt.nmtune_loss(
        feats.chunk(2)[0],
        tuned,
        F.linear(tuned, head_w, head_b),
        labels,
        mse_weight=weights["mse_loss_weight"],
        cov_weight=weights["cov_loss_weight"],
        svd_weight=weights["svd_loss_weight"],
    )
    (grad,) = torch.autograd.grad(terms["loss"], tuned)
    for ours, key in (("loss", "loss"), ("mse", "mse_loss"), ("cov", "cov_loss")):
        assert float(terms[ours].detach()) == pytest.approx(case[key], rel=1e-5, abs=1e-6), ours
    assert torch.allclose(grad, torch.tensor(case["grad_mlp_feats"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", FIXTURE["spectrum_cases"], ids=lambda c: f"M{c['rows']}")
def test_feature_spectrum_matches_the_official_preprocessing_and_svd(case):
    gen = torch.Generator().manual_seed(case["seed"])
    d = case["dim"]
    features = torch.randn(case["rows"], d, generator=gen) @ torch.randn(d, d, generator=gen) + 0.5
    ours = npt.feature_spectrum(features)
    official = torch.tensor(case["singular_values"], dtype=torch.float64)
    assert torch.allclose(ours, official, rtol=1e-5, atol=1e-5)
