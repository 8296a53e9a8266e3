"""Unit tests of the noisy pre-training workbench (glyphs, resized digits, CNN, NMTune's parts)."""

import math

import numpy as np
import pytest
import torch

from noisefit_lib import noisy_pretraining as npt


def test_glyphs_are_seeded_in_range_and_classes_differ():
    templates = npt.glyph_templates(4, rng=np.random.default_rng(0))
    assert len(templates) == 4 and all(t.shape[1:] == (2, 2) for t in templates)
    x, y = npt.glyph_set(templates, 30, rng=np.random.default_rng(1))
    x2, y2 = npt.glyph_set(templates, 30, rng=np.random.default_rng(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (120, 1, npt.SIZE, npt.SIZE) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert sorted(torch.bincount(y).tolist()) == [30] * 4
    # a class's mean image is closer to its own renderings than to another class's
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    distance = ((x[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (distance.argmin(1) == y).float().mean() > 0.9


def test_bad_templates_request_is_refused():
    with pytest.raises(ValueError, match="strokes"):
        npt.glyph_templates(3, rng=np.random.default_rng(0), strokes=(4, 2))


def test_digits_16_keeps_all_digits_in_unit_range():
    x, y = npt.digits_16()
    assert x.shape == (1797, 1, 16, 16) and set(y.tolist()) == set(range(10))
    assert 0 <= x.min() and x.max() <= 1


def test_few_shot_split_is_disjoint_complete_and_balanced():
    labels = torch.arange(5).repeat_interleave(12)
    train, test = npt.few_shot(labels, 3, rng=np.random.default_rng(0))
    assert torch.bincount(labels[train]).tolist() == [3] * 5
    assert sorted(torch.cat([train, test]).tolist()) == list(range(60))
    with pytest.raises(ValueError, match="need > 12"):
        npt.few_shot(labels, 12, rng=np.random.default_rng(0))


def test_pretrain_fits_clean_glyphs_and_reports_memorisation():
    templates = npt.glyph_templates(3, rng=np.random.default_rng(0))
    x, y = npt.glyph_set(templates, 40, rng=np.random.default_rng(1))
    noisy = y.clone()
    noisy[:20] = (noisy[:20] + 1) % 3
    gen = torch.Generator().manual_seed(0)
    run = npt.pretrain(x, noisy, y, num_classes=3, epochs=30, generator=gen, dim=16, width=8)
    again = npt.pretrain(
        x, noisy, y, num_classes=3, epochs=30, generator=torch.Generator().manual_seed(0),
        dim=16, width=8,
    )  # fmt: skip
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            run.model.state_dict().values(), again.model.state_dict().values(), strict=True
        )
    )
    assert run.model.features(x[:5]).shape == (5, 16)
    assert 0 <= run.memorised <= 1 and 0 <= run.train_acc_given <= 1
    clean = npt.pretrain(x, y, y, num_classes=3, epochs=30, generator=gen, dim=16, width=8)
    assert math.isnan(clean.memorised) and clean.train_acc_given > 0.9
    with pytest.raises(ValueError, match="epochs"):
        npt.pretrain(x, y, y, num_classes=3, epochs=0, generator=gen)


def test_spectrum_diagnostics_on_known_spectra():
    flat = torch.ones(8, dtype=torch.float64)
    assert npt.singular_value_entropy(flat) == pytest.approx(math.log(8))
    assert npt.largest_singular_value_ratio(flat) == pytest.approx(math.log(8))
    spike = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert (
        npt.singular_value_entropy(spike) == 0.0 and npt.largest_singular_value_ratio(spike) == 0.0
    )
    # rescaling features leaves the spectrum's shares unchanged (rows are normalised first)
    f = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    s1, s2 = npt.feature_spectrum(f), npt.feature_spectrum(7.0 * f)
    assert torch.allclose(s1, s2)
    with pytest.raises(ValueError, match="matrix"):
        npt.feature_spectrum(torch.ones(5))


def test_residual_mlp_shapes_and_nmtune_terms():
    torch.manual_seed(0)
    net = npt.ResidualMLP(6, 3)
    f = torch.randn(8, 6)
    tuned, logits = net(torch.cat([f, f]))
    assert tuned.shape == (16, 6) and logits.shape == (16, 3)
    terms = npt.nmtune_loss(f, tuned, logits, torch.randint(3, (8,)))
    assert set(terms) == {"loss", "ce", "mse", "svd", "cov"}
    expected = terms["ce"] + terms["mse"] - 0.001 * terms["svd"] + 0.04 * terms["cov"]
    assert torch.allclose(terms["loss"], expected)
    terms["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="2B"):
        npt.nmtune_loss(f, tuned[:8], logits[:8], torch.randint(3, (8,)))
    assert npt.off_diagonal(torch.arange(9.0).view(3, 3)).tolist() == [1, 2, 3, 5, 6, 7]
