"""noisefit_lib.ood: digits OOD splits, the small CNN, the attacks, the Mahalanobis pieces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import EmpiricalCovariance

from noisefit_lib import metrics, noisy_labels, ood


@pytest.fixture(scope="module")
def data():
    return ood.ood_digits(rng=np.random.default_rng(0))


def test_ood_digits_is_seeded_stratified_and_holds_out_the_other_classes(data):
    again = ood.ood_digits(rng=np.random.default_rng(0))
    other = ood.ood_digits(rng=np.random.default_rng(1))
    assert data.x_train.shape[1:] == (1, 8, 8) and data.num_classes == 6
    assert torch.equal(data.x_test, again.x_test) and not torch.equal(data.x_test, other.x_test)
    n_in = len(data.x_train) + len(data.x_val) + len(data.x_test)
    n_out = len(data.held_out_val) + len(data.held_out_test)
    assert n_in + n_out == 1797 and abs(len(data.held_out_val) - len(data.held_out_test)) <= 1
    assert abs(len(data.x_test) / n_in - 0.2) < 0.01 and torch.bincount(data.y_test).min() >= 30
    assert set(data.y_train.tolist()) == set(range(6))
    sub = ood.ood_digits(rng=np.random.default_rng(0), in_classes=(7, 3))
    assert set(sub.y_train.tolist()) == {0, 1} and len(sub.held_out_test) > 600
    for bad in ((1, 1), (3,), (0, 11)):
        with pytest.raises(ValueError):
            ood.ood_digits(rng=np.random.default_rng(0), in_classes=bad)


@pytest.mark.parametrize("kind", ood.FAR_OOD_KINDS)
def test_far_ood_kinds(kind, data):
    like = data.x_test[:50]
    out = ood.far_ood(kind, like, rng=np.random.default_rng(2))
    assert out.shape == like.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    if kind == "inverted":
        assert torch.allclose(out + like, torch.ones_like(like))
    if kind == "permuted":  # each image's histogram is kept, its layout is not
        assert torch.equal(out.flatten(1).sort(1).values, like.flatten(1).sort(1).values)
        assert not torch.equal(out, like)
    if kind == "blobs":
        assert abs(float(out.mean() - like.mean())) < 0.05


def test_far_ood_rejects_bad_input(data):
    with pytest.raises(ValueError, match="valid"):
        ood.far_ood("rotated", data.x_test, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        ood.far_ood("uniform", data.x_test.flatten(1), rng=np.random.default_rng(0))


def test_small_cnn_is_seeded_and_returns_averaged_features():
    a = ood.SmallCNN(6, generator=torch.Generator().manual_seed(0))
    b = ood.SmallCNN(6, generator=torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 8, 8)
    logits, features = a.feature_list(x)
    assert logits.shape == (5, 6) and [f.shape[1] for f in features] == a.feature_sizes
    assert torch.equal(a(x), b(x)) and torch.equal(a.layer_features(x, 1), features[1])


def test_training_fits_the_digits(data):
    model = ood.SmallCNN(6, generator=torch.Generator().manual_seed(0))
    losses = ood.train_classifier(
        model, data.x_train, data.y_train, epochs=15, generator=torch.Generator().manual_seed(1)
    )
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        assert (model(data.x_test).argmax(1) == data.y_test).double().mean() > 0.9
    with pytest.raises(ValueError):
        ood.train_classifier(model, data.x_train, data.y_train, epochs=0, generator=None)


def test_attacks_stay_in_the_ball_and_raise_the_loss(data):
    torch.manual_seed(0)
    model = ood.SmallCNN(6, generator=torch.Generator().manual_seed(0))
    ood.train_classifier(
        model, data.x_train, data.y_train, epochs=10, generator=torch.Generator().manual_seed(1)
    )
    x, y, eps = data.x_test[:100], data.y_test[:100], 0.1
    fgsm = ood.fgsm(model, x, y, eps)
    pgd = ood.pgd(
        model,
        x,
        y,
        eps,
        steps=10,
        step_size=0.025,
        restarts=2,
        generator=torch.Generator().manual_seed(2),
    )
    with torch.no_grad():
        losses = [F.cross_entropy(model(v), y).item() for v in (x, fgsm, pgd)]
    for adv in (fgsm, pgd):
        assert (adv - x).abs().max() <= eps + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    assert losses[0] < losses[1] < losses[2]
    with pytest.raises(ValueError):
        ood.pgd(model, x, y, eps, steps=0, step_size=0.1, generator=torch.Generator())


def test_class_gaussians_equal_sklearn_on_centred_features():
    gen = torch.Generator().manual_seed(0)
    features, labels = torch.randn(200, 5, generator=gen), torch.arange(200) % 4
    features = features + 3 * labels[:, None]
    g = ood.fit_class_gaussians(features, labels, 4)
    for c in range(4):
        assert torch.allclose(g.means[c], features[labels == c].double().mean(0))
    sk = EmpiricalCovariance().fit((features.double() - g.means[labels]).numpy())
    np.testing.assert_allclose(g.precision, sk.precision_, rtol=1e-8)
    brute = torch.stack(
        [
            torch.stack([-0.5 * (f - m) @ g.precision @ (f - m) for m in g.means])
            for f in features[:10].double()
        ]
    )
    assert torch.allclose(ood.gaussian_scores(features[:10], g), brute)
    assert torch.allclose(ood.mahalanobis_score(features[:10], g), brute.max(1).values)
    with pytest.raises(ValueError, match="every class"):
        ood.fit_class_gaussians(features, labels, 5)


def test_preprocessing_moves_inputs_towards_the_closest_class():
    model = ood.SmallCNN(3, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g = ood.fit_class_gaussians(model.layer_features(x, 2), torch.arange(40) % 3, 3)
    before = ood.mahalanobis_score(model.layer_features(x, 2), g)
    x_hat = ood.preprocess(x, lambda v: model.layer_features(v, 2), g, 0.002)
    after = ood.mahalanobis_score(model.layer_features(x_hat, 2), g)
    assert set(((x_hat - x).abs() / 0.002).round().unique().tolist()) == {1.0}
    assert (after > before).double().mean() > 0.9  # a small step lowers the distance


def test_lid_is_the_dimension_of_uniform_data():
    gen = torch.Generator().manual_seed(0)
    for dim in (2, 5):
        points = torch.rand(3000, dim, generator=gen)
        lid = ood.lid_scores(points[:300], points, k=20)
        assert abs(float(lid.median()) - dim) < 0.25 * dim
    with pytest.raises(ValueError):
        ood.lid_scores(points[:3], points[:3], k=3)


def test_tnr_at_tpr_by_hand():
    known, novel = np.arange(1, 21, dtype=float), np.array([0.0, 0.5, 1.0, 2.5, 30.0])
    # removing the lowest in-distribution score leaves TPR 19/20 = 0.95; the novel 0, 0.5 (and
    # the tie at 1, removed after the in-distribution 1) are below: 2 of 5 rejected
    assert metrics.tnr_at_tpr(known, novel) == pytest.approx(1 - 3 / 5)
    assert metrics.tnr_at_tpr(known + 25, novel) == pytest.approx(1 - 1 / 5)  # 30 above 26
    with pytest.raises(ValueError):
        metrics.tnr_at_tpr(known, [])
    with pytest.raises(ValueError):
        metrics.tnr_at_tpr(known, novel, tpr=1.0)


def test_mixture_endpoints_and_normalisation():
    gen = torch.Generator().manual_seed(0)
    g, h = torch.randn(20, 5, generator=gen), 30 * torch.randn(20, 5, generator=gen)
    assert torch.allclose(ood.mixed_log_probs(g, h, 0.0), F.log_softmax(g, 1))
    assert torch.allclose(ood.mixed_log_probs(g, h, 1.0), F.log_softmax(h, 1))
    alpha = torch.rand(20, generator=gen)
    mixed = ood.mixed_log_probs(g, h, alpha, std_scale=2.0)
    direct = (1 - alpha[:, None]) * F.softmax(2 * g, 1) + alpha[:, None] * F.softmax(h, 1)
    assert torch.allclose(mixed.exp(), direct, atol=1e-6)
    assert torch.allclose(mixed.exp().sum(1), torch.ones(20))
    with pytest.raises(ValueError):
        ood.mixed_log_probs(g, h, 1.5)


def test_composite_loss_terms():
    preds, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    gammas, attacked = torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 1.0])
    bce, ce = np.log(2), np.log(3)
    loss = ood.composite_loss(preds, labels, gammas, attacked, c_bce=1.0, c_ce=2.0, c_prod=3.0)
    assert torch.allclose(loss, torch.full((4,), bce + 2 * ce + 3 * bce * ce, dtype=torch.float32))


def test_digit_images_reshape_the_shared_split():
    flat = noisy_labels.load_digits_split(rng=np.random.default_rng(3))
    split = ood.digit_images(rng=np.random.default_rng(3))
    assert split.x_train.shape[1:] == (1, 8, 8) and len(split.x_test) == len(flat.x_test)
    assert torch.equal(split.x_test.flatten(1), flat.x_test)
    assert torch.equal(split.y_val, flat.y_val)
