"""Unit tests of noisefit_lib.preferences (chapter 19, robust DPO)."""

import numpy as np
import pytest

from noisefit_lib import preferences as prefs


def bandit(seed=0, **kw):
    return prefs.make_bandit(np.random.default_rng(seed), **kw)


def test_bandit_shapes_and_theta_norm():
    b = bandit(n_contexts=7, n_actions=5, dim=3, theta_norm=1.5)
    assert b.features.shape == (7, 5, 3) and b.dim == 3
    assert np.isclose(np.linalg.norm(b.theta_star), 1.5)
    assert np.allclose(np.exp(prefs.policy_logits(b, b.theta_star)).sum(1), 1)


def test_pairs_are_seeded_distinct_and_flip_at_the_rate():
    b = bandit()
    p1 = prefs.sample_pairs(b, 20_000, 0.3, np.random.default_rng(1))
    p2 = prefs.sample_pairs(b, 20_000, 0.3, np.random.default_rng(1))
    assert np.array_equal(p1.winner, p2.winner) and len(p1) == 20_000
    assert (p1.winner != p1.loser).all()
    assert abs(p1.flipped.mean() - 0.3) < 0.015
    with pytest.raises(ValueError):
        prefs.sample_pairs(b, 5, 0.5, np.random.default_rng(0))


def test_clean_labels_follow_bradley_terry():
    b = bandit()
    pairs = prefs.sample_pairs(b, 40_000, 0.0, np.random.default_rng(2))
    h_star = prefs.pair_features(b, pairs) @ b.theta_star
    # winner is the observed preferred action: P(observed order) = sigmoid(beta h*) on average
    assert abs(np.mean(h_star > 0) - np.mean(1 / (1 + np.exp(-np.abs(h_star))))) < 0.01


def test_rdpo_is_unbiased_and_cdpo_is_not():
    h, beta, eps = np.linspace(-4, 4, 9), 0.7, 0.3
    mix = (1 - eps) * prefs.rdpo_loss(h, beta, eps) + eps * prefs.rdpo_loss(-h, beta, eps)
    assert np.allclose(mix, prefs.dpo_loss(h, beta), atol=1e-12)
    mix = (1 - eps) * prefs.cdpo_loss(h, beta, eps) + eps * prefs.cdpo_loss(-h, beta, eps)
    assert not np.allclose(mix, prefs.dpo_loss(h, beta))


@pytest.mark.parametrize("method", prefs.METHODS)
def test_loss_weight_is_the_gradient(method):
    h, beta, eps, dh = np.linspace(-3, 3, 7), 1.3, 0.2, 1e-6
    f = prefs.loss_fn(method, beta, eps)
    numeric = (f(h + dh) - f(h - dh)) / (2 * dh)
    assert np.allclose(numeric, -beta * prefs.loss_weight(method, h, beta, eps), atol=1e-7)


def test_fit_recovers_theta_star_without_noise():
    b = bandit()
    x = prefs.pair_features(b, prefs.sample_pairs(b, 8000, 0.0, np.random.default_rng(3)))
    result = prefs.fit(x, "DPO", beta=b.beta)
    assert result.converged and not result.diverged
    assert prefs.param_error(b, result.theta) < 0.2


def test_unbounded_rdpo_diverges_and_l2_guards_it():
    b = bandit()
    x = prefs.pair_features(b, prefs.sample_pairs(b, 60, 0.4, np.random.default_rng(4)))
    assert prefs.recession_slope(x, 0.4) > 0
    assert prefs.fit(x, "rDPO", beta=1.0, eps=0.4).diverged
    guarded = prefs.fit(x, "rDPO", beta=1.0, eps=0.4, l2=1e-2)
    assert guarded.converged and not guarded.diverged
    path = prefs.gradient_descent(x, "rDPO", beta=1.0, eps=0.4, steps=200)
    assert np.linalg.norm(path[-1]) > np.linalg.norm(path[99]) > 1


def test_value_is_maximal_at_theta_star_and_frontier_dominates():
    b = bandit()
    best = prefs.value(b, b.theta_star)
    rng = np.random.default_rng(5)
    for _ in range(5):
        theta = b.theta_star + 0.5 * rng.standard_normal(b.dim)
        assert prefs.value(b, theta) < best
        kl = prefs.kl_to_ref(b, theta)
        assert prefs.frontier_reward(b, kl) >= prefs.expected_reward(b, theta) - 1e-9
    assert np.isclose(prefs.kl_to_ref(b, np.zeros(b.dim)), 0)
