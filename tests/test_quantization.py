"""noisefit_lib.quantization: the uniform quantizers and NoisyQuant's searches."""

import pytest
import torch
import torch.nn.functional as F

from noisefit_lib import quantization as q


def test_activation_quantizer_levels_and_clamp():
    x = torch.tensor([-10.0, -0.26, -0.24, 0.0, 0.74, 0.76, 10.0])
    out = q.quantize_activation(x, 3, 0.5)  # levels -4..3 times 0.5
    assert out.tolist() == [-2.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.5]
    with pytest.raises(ValueError):
        q.quantize_activation(x, 1, 0.5)


def test_weight_quantizer_is_per_row():
    w = torch.tensor([[1.0, -0.5, 0.26], [100.0, 3.0, -40.0]])
    wq = q.quantize_weight(w, 3)  # n = 3 levels each side; row steps 1/3 and 100/3
    assert torch.allclose(wq[0], torch.tensor([1.0, -2 / 3, 1 / 3]))
    assert torch.allclose(wq[1], torch.tensor([100.0, 0.0, -100 / 3]))
    assert torch.equal(wq.abs().amax(1), w.abs().amax(1))


def _layer(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = F.gelu(torch.randn(64, 16, generator=gen) * torch.exp(torch.randn(16, generator=gen)))
    return x, torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen)


def _error(x, w, b, bits, step, bias=0.0):
    out = F.linear(q.quantize_activation(x + bias, bits, step) - bias, w, b)
    return float(((out - F.linear(x, w, b)) ** 2).mean())


def test_clip_search_never_loses_to_the_maximum():
    x, w, b = _layer()
    for bits in (3, 4, 6):
        step = q.search_clip(x, w, b, bits, candidates=200)
        naive = x.abs().max() / (2 ** (bits - 1) - 1)
        assert step <= naive
        assert _error(x, w, b, bits, step) <= _error(x, w, b, bits, naive)
    with pytest.raises(ValueError):
        q.search_clip(x, w, b, 4, candidates=0)


def test_noisy_bias_search_never_loses_to_no_bias():
    x, w, b = _layer(1)
    step = q.search_clip(x, w, b, 4, candidates=100)
    noise = (torch.rand(16, generator=torch.Generator().manual_seed(2)) - 0.5) * step
    bias, scale = q.search_noisy_bias(
        x, w, b, 4, step, noise, mean_candidates=20, range_candidates=50
    )
    assert bias.shape == noise.shape and 0.0 <= scale < 2.0
    assert _error(x, w, b, 4, step, bias) <= _error(x, w, b, 4, step)
    off, scale_off = q.search_noisy_bias(
        x, w, b, 4, step, noise, search_mean=False, search_range=False
    )
    assert scale_off == 0.0 and torch.equal(off, torch.zeros(16))
