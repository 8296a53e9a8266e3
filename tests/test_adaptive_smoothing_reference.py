"""The adaptive-smoothing mixture and its mixing-network loss against the official code.

Source: ``Bai-YT/AdaptiveSmoothing`` at commit 51f0198: ``CompositeModel.forward`` of
``models/comp_model.py`` with a fixed gamma (set by ``set_gamma_value`` after construction, which
resets it; no mixing network, alpha = sigmoid(gamma)) on two
base models that return fixed logits, and ``CompLoss`` of ``adaptive_smoothing/losses.py``, run
once outside this repository on CPU. The fixture holds the inputs and the official outputs.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from noisefit_lib import ood

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "adaptive_smoothing_reference.json").read_text()
)


@pytest.mark.parametrize("case", FIXTURE["mixtures"], ids=lambda c: f"gamma{c['gamma']}")
def test_mixture_matches_composite_model(case):
    g, h = torch.tensor(FIXTURE["g_logits"]), torch.tensor(FIXTURE["h_logits"])
    alpha = torch.sigmoid(torch.tensor(case["gamma"]))
    ours = ood.mixed_log_probs(
        g, h, alpha, std_scale=case["std_scale"], rob_scale=case["rob_scale"]
    )
    np.testing.assert_allclose(ours, case["log_probs"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", FIXTURE["comp_loss"], ids=lambda s: f"bce{s['consts']['bce']}")
def test_composite_loss_matches_comp_loss(spec):
    consts = spec["consts"]
    loss = ood.composite_loss(
        torch.tensor(FIXTURE["preds"]),
        torch.tensor(FIXTURE["labels"]),
        torch.tensor(FIXTURE["gammas"]),
        torch.tensor(FIXTURE["sup_labels"]),
        c_bce=consts["bce"],
        c_ce=consts["ce"],
        c_prod=consts["prod"],
    )
    np.testing.assert_allclose(loss, spec["loss"], rtol=1e-6, atol=1e-6)
