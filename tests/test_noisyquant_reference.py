"""NoisyQuant's quantizers and searches against the official code.

Source: ``kriskrisliu/NoisyQuant`` at commit ba544d1: ``quant_weight``, ``percentile_search``
(1000 clipping candidates) and the mean (200 candidates) and range (1000) searches of
``quant_forward`` in ``fast_quant.py``, run once outside this repository on CPU, through
``fast_quant`` on a one-layer model, on the seeded inputs of the fixture's recipe. The official
code draws its noise vector from the global generator; the fixture stores that vector, which our
search takes as an argument. The fixture holds the inputs and the official outputs.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisefit_lib import quantization as q

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "noisyquant_reference.json").read_text())


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"seed{c['seed']}b{c['bits']}")
def test_searches_and_layer_match_fast_quant(case):
    x, bits = torch.tensor(case["x"]), case["bits"]
    weight_q = q.quantize_weight(torch.tensor(case["weight"]), bits)
    np.testing.assert_allclose(weight_q, case["weight_q"], rtol=1e-6, atol=1e-6)
    bias = torch.tensor(case["bias"])
    step = q.search_clip(x, weight_q, bias, bits, candidates=1000)
    assert float(step) == pytest.approx(case["act_scale"], rel=1e-6)
    noise = torch.tensor(case["noise"])
    noisy_bias, _ = q.search_noisy_bias(
        x,
        weight_q,
        bias,
        bits,
        step,
        noise,
        search_mean=case["search_mean"],
        search_range=case["search_noisy"],
    )
    np.testing.assert_allclose(noisy_bias.expand(1, 1, 12), case["noisy_bias"], atol=1e-6)
    out = F.linear(q.quantize_activation(x + noisy_bias, bits, step) - noisy_bias, weight_q, bias)
    np.testing.assert_allclose(out, case["output"], rtol=1e-5, atol=1e-5)
