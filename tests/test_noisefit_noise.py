"""The adaptive noise and its theory (spec section 3, T1-T5), plus NEFTune's scale."""

import math

import numpy as np
import pytest
import torch

from noisefit_lib.noisefit import noise as N


def _h(seed=0, shape=(2, 5, 16), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def test_returns_noisy_and_scale_shapes_and_bound():
    h = _h()
    noisy, s = N.adaptive_noise(h, 0.3, generator=torch.Generator().manual_seed(1))
    assert noisy.shape == s.shape == h.shape
    assert (s > 0).all()
    # T2 bound: s <= f_max * base_std * MAD, since w <= 1 and f <= 5
    med = h.median(-1, keepdim=True).values
    mad = (h - med).abs().median(-1, keepdim=True).values
    assert (s <= 5.0 * 0.3 * mad + 1e-6).all()


def test_generator_makes_it_pure():
    h = _h()
    a, _ = N.adaptive_noise(h, 0.2, generator=torch.Generator().manual_seed(7))
    b, _ = N.adaptive_noise(h, 0.2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_t1_t2_conditional_mean_and_covariance():
    """E[h~ | h] = h and Var[h~ | h] = s^2, element by element (N draws)."""
    h = _h(shape=(2, 4, 16))
    gen = torch.Generator().manual_seed(3)
    n = 4000
    _, s = N.adaptive_noise(h, 0.5, generator=gen)
    z = torch.stack([(N.adaptive_noise(h, 0.5, generator=gen)[0] - h) / s for _ in range(n)])
    assert z.mean(0).abs().max() < 5 / math.sqrt(n)
    assert (z.var(0) - 1).abs().max() < 0.15  # 128 elements, sd of var ~ sqrt(2/n) = 0.022
    # and the covariance is diagonal: correlation of two features of one token ~ 0
    corr = (z[:, 0, 0, 0] * z[:, 0, 0, 1]).mean()
    assert abs(float(corr)) < 5 / math.sqrt(n)


def test_t3_variance_grows_by_expected_s2():
    """Var[h~] = Var[h] + E[s^2] over a population of h (not 'variance preserving')."""
    h = _h(seed=5, shape=(512, 8, 64))
    noisy, s = N.adaptive_noise(h, 0.5, generator=torch.Generator().manual_seed(9))
    grown = noisy.var() - h.var()
    expected = (s**2).mean()
    assert abs(float(grown / expected) - 1) < 0.05
    assert float(grown) > 0.1  # strictly larger: not preserved


def test_t5_gradient_error_is_second_order_in_sigma():
    """E[grad of loss(h~)] - grad of loss(h) shrinks like sigma^2: log-log slope ~ 2."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    h0 = torch.randn(4, 6, 16, generator=g, dtype=dt)
    w1 = torch.randn(16, 32, generator=g, dtype=dt) / 4
    w2 = torch.randn(32, 10, generator=g, dtype=dt) / 6
    y = torch.randint(0, 10, (4, 6), generator=g)
    eps = [torch.randn(h0.shape, generator=g, dtype=dt) for _ in range(8)]

    def grad(sigma, e):
        w = w1.clone().requires_grad_(True)
        h = h0 if e is None else N.adaptive_noise(h0, sigma, noise=e, detach_scale=True)[0]
        logits = torch.tanh(h @ w) @ w2
        torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.reshape(-1)).backward()
        return w.grad

    clean = grad(0.0, None)
    sigmas = [0.08, 0.04, 0.02, 0.01]
    errs = []
    for sigma in sigmas:  # antithetic pairs: the odd orders cancel, the sigma^2 term remains
        avg = sum(grad(sigma, e) + grad(sigma, -e) for e in eps) / (2 * len(eps))
        errs.append(float((avg - clean).norm()))
    slope = np.polyfit(np.log(sigmas), np.log(errs), 1)[0]
    assert 1.8 < slope < 2.2, (slope, errs)


def test_mask_excludes_padding():
    h = _h(shape=(2, 6, 16))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    h_pad = h.clone()
    h_pad[1, 4:] = 100.0  # huge padding activations
    s_ref = N.adaptive_scale(h[:, :, :], 0.1, mask=mask)
    s_pad = N.adaptive_scale(h_pad, 0.1, mask=mask)
    torch.testing.assert_close(s_pad[mask.bool()], s_ref[mask.bool()])
    assert (s_pad[1, 4:] == 0).all()
    # v1 (no mask) lets padding change the statistics of real tokens
    assert not torch.allclose(N.adaptive_scale(h_pad, 0.1)[0], N.adaptive_scale(h, 0.1)[0])


def test_base_std_references():
    h = _h(scale=3.0)
    assert N.base_std_for(h, 0.1, "mad") == 0.1
    assert N.base_std_for(h, 0.1, "v1") == pytest.approx(0.1 * h.std().item() * 0.1)
    assert N.base_std_for(h, 0.1, "global_std") == pytest.approx(0.1 * h.std().item(), rel=1e-6)
    with pytest.raises(ValueError, match="mad, global_std, v1"):
        N.base_std_for(h, 0.1, "bogus")


def test_mad_reference_is_scale_invariant_and_v1_is_not():
    h = _h(shape=(2, 8, 64))
    ratios = {}
    for ref in ("mad", "v1"):
        fn = N.AdaptiveNoise(0.1, ref)
        out = []
        for c in (0.1, 10.0):
            noisy, _ = fn(h * c, 0, None, torch.Generator().manual_seed(0))
            out.append(float((noisy - h * c).std() / (h * c).std()))
        ratios[ref] = out
    assert ratios["mad"][0] == pytest.approx(ratios["mad"][1], rel=1e-3)
    assert ratios["v1"][1] / ratios["v1"][0] == pytest.approx(100, rel=1e-3)  # sigma^2 std(h)


def test_neftune_uses_unpadded_lengths():
    emb = torch.zeros(2, 8, 4)
    mask = torch.tensor([[1] * 8, [1] * 2 + [0] * 6])
    out = N.neftune_noise(emb, 5.0, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    # row 0: L = 8, row 1: L = 2 -> bound alpha / sqrt(L d)
    assert out[0].abs().max() <= 5 / math.sqrt(8 * 4)
    assert out[1, :2].abs().max() <= 5 / math.sqrt(2 * 4)
    assert out[1, :2].abs().max() > 5 / math.sqrt(8 * 4)  # larger than the padded-length scale
    assert (out[1, 2:] == 0).all()  # no noise on padding
    padded = N.neftune_noise(
        emb,
        5.0,
        attention_mask=mask,
        per_sequence_length=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert padded.abs().max() <= 5 / math.sqrt(8 * 4)
    assert (padded[1, 2:] != 0).any()


def test_neftune_noise_is_detached():
    emb = torch.randn(1, 4, 8, requires_grad=True)
    out = N.neftune_noise(emb, 5.0, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    torch.testing.assert_close(emb.grad, torch.ones_like(emb))


def test_config_validation():
    with pytest.raises(ValueError, match="choose mad"):
        N.AdaptiveNoise(0.1, "nope")
    with pytest.raises(ValueError, match=">= 0"):
        N.AdaptiveNoise(-1.0)
