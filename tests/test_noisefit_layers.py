"""Layer selection: what v1's SNR measures, the estimators, Spectrum, random/all, v2 auto."""

import math

import pytest
import torch

from noisefit_lib.noisefit import calibrate, inject, layers, toy_architectures


def _hidden(seed=0, shape=(4, 8, 32)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_v1_snr_is_inverse_hidden_scale():
    """T8: SNR * scale(h) is invariant under h -> c h, so SNR ~ 1 / scale."""
    h = _hidden()
    cs = [0.1, 1.0, 10.0, 100.0]
    snr = layers.snr_v1([h * c for c in cs], 0.1, generator=torch.Generator().manual_seed(0))
    prod = snr * torch.tensor(cs)
    assert float(prod.max() / prod.min()) < 1.02
    # and the Monte Carlo estimate matches its closed form
    closed = layers.snr_closed_form([h * c for c in cs], 0.1)
    torch.testing.assert_close(snr, closed, rtol=0.03, atol=0)


def test_snr_ranking_equals_inverse_scale_ranking():
    scales = [3.0, 0.5, 8.0, 1.0, 0.2]
    hidden = [_hidden(i) * c for i, c in enumerate(scales)]
    snr = layers.snr_v1(hidden, 0.1, generator=torch.Generator().manual_seed(0))
    by_scale = -layers.hidden_scale(hidden)
    for fmt in ("Largest", "Lowest"):
        assert layers.top_k(snr, 2, fmt) == layers.top_k(by_scale, 2, fmt)
    assert layers.top_k(snr, 2, "Largest") == [1, 4]  # the two smallest-scale layers


def test_layer_outputs_raw_vs_post_norm_last():
    m = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=64)
    batch = {"input_ids": torch.randint(4, 64, (2, 6), generator=torch.Generator().manual_seed(0))}
    raw = layers.layer_outputs(m, batch)
    v1 = layers.layer_outputs(m, batch, post_norm_last=True)
    assert len(raw) == len(v1) == 3
    for a, b in zip(raw[:-1], v1[:-1], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(raw[-1], v1[-1])  # v1's last entry is after the final norm
    assert m.training  # mode restored


def test_spectrum_weight_snr():
    g = torch.Generator().manual_seed(0)
    noise_only = torch.randn(64, 64, generator=g)
    u, v = torch.randn(64, 2, generator=g), torch.randn(2, 64, generator=g)
    structured = 5 * u @ v + 0.1 * torch.randn(64, 64, generator=g)
    unit = [w / torch.linalg.svdvals(w)[0] for w in (structured, noise_only)]
    assert layers.weight_snr(unit[0]) > 10 * layers.weight_snr(unit[1])
    # Spectrum divides by the top singular value, so its SNR scales like 1 / scale(W)
    assert layers.weight_snr(2 * noise_only) == pytest.approx(
        layers.weight_snr(noise_only) / 2, rel=1e-4
    )
    m = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=64)
    assert layers.spectrum_snr(m).shape == (3,)


def test_choose_layers_methods_and_errors():
    m = toy_architectures.toy_model("llama", hidden=32, layers=4, vocab=64)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, 64, (4, 6), generator=g)
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    for method in ("snr", "snr_propagated", "scale", "spectrum", "random"):
        choice = layers.choose_layers(
            m, method, batch=batch, k=2, generator=torch.Generator().manual_seed(1)
        )
        assert len(choice.layers) == 2 and choice.layers == sorted(set(choice.layers))
    assert layers.choose_layers(m, "all").layers == [0, 1, 2, 3]
    a = layers.random_layers(10, 3, generator=torch.Generator().manual_seed(5))
    assert a == layers.random_layers(10, 3, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="snr, snr_propagated, scale, spectrum, random, all, auto"):
        layers.choose_layers(m, "bogus", batch=batch)
    with pytest.raises(ValueError, match="Largest, Lowest"):
        layers.choose_layers(m, "snr", batch=batch, snr_format="largest")
    with pytest.raises(ValueError, match=r"1\.\.4"):
        layers.choose_layers(m, "snr", batch=batch, k=9)
    with pytest.raises(ValueError, match="needs a batch"):
        layers.choose_layers(m, "snr")


def test_auto_calibration():
    m = toy_architectures.toy_model("llama", hidden=32, layers=4, vocab=64)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        x = torch.randint(4, 64, (4, 6), generator=g)
        batches.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()})
    choice = calibrate.calibrate_auto(m, batches, generator=torch.Generator().manual_seed(0))
    assert 1 <= len(choice.layers) <= math.ceil(math.sqrt(4))
    assert set(choice.sigmas) == set(choice.layers)
    base = 1 / math.sqrt(32)
    for s in choice.sigmas.values():
        assert any(abs(s - f * base) < 1e-9 for f in (0.25, 0.5, 1.0, 1.5, 2.0))
    assert len(choice.report["kl"]) == 4
    blocks = inject.find_decoder_layers(m)
    assert not [
        h for b in blocks for h in b._forward_hooks.values() if h.__module__.startswith("noisefit")
    ]


def test_choose_layers_auto_uses_the_given_generator():
    """v2 calibration through choose_layers follows its generator, not torch's global state."""
    m = toy_architectures.toy_model("llama", hidden=32, layers=4, vocab=64)
    x = torch.randint(4, 64, (4, 6), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    reports = []
    for global_seed in (5, 6):
        torch.manual_seed(global_seed)
        choice = layers.choose_layers(
            m, "auto", batch=batch, generator=torch.Generator().manual_seed(0)
        )
        reports.append(choice.report["kl"])
    assert reports[0] == reports[1]


def test_depth_diverse():
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.3, 0.95, 0.7, 0.6, 0.5])
    # candidates in the early band [0, 3) and late band [6, 9): one per band first
    assert calibrate.depth_diverse(scores, [1, 2, 6, 7], 3) == [1, 2, 6]
    assert calibrate.depth_diverse(scores, [], 3) == [5]


def test_faithful_snr_equals_v1_transcription():
    """v1's select_layers formulas (spec 1.2), written out, with the same random stream."""
    hidden = [_hidden(i, (2, 5, 16)) * c for i, c in enumerate([0.5, 2.0, 1.0])]
    sigma = 0.1
    gen = torch.Generator().manual_seed(4)
    diff = torch.zeros(10, 3)
    for p in range(10):
        for i, h in enumerate(hidden):
            v = h.var(-1, keepdim=True)
            f = torch.clamp(torch.exp(v / (v.mean() + 1e-6)), max=5.0)
            med = h.median(-1, keepdim=True).values
            mad = (h - med).abs().median(-1, keepdim=True).values
            mad = torch.maximum(mad, 1e-6 * h.norm(dim=-1, keepdim=True))
            w = torch.exp(-0.1 * (h - med).abs() / (mad + 1e-6))
            s = sigma * h.std().item() * mad * w * f
            noisy = h + torch.randn(h.shape, generator=gen) * s
            diff[p, i] = (noisy - h).abs().mean()
    want = torch.stack([h.abs().mean() for h in hidden]) / (diff.mean(0) + 1e-6)
    got = layers.snr_v1(hidden, sigma, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, want)
