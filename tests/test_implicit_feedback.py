"""Unit tests of the synthetic implicit-feedback world, sampler, trainer and metrics."""

import numpy as np
import pytest

from noisefit_lib import implicit_feedback as imf


def test_world_is_seeded_and_hides_the_requested_share():
    a = imf.make_world(60, 80, rng=np.random.default_rng(0), hidden=0.6, density=0.1)
    b = imf.make_world(60, 80, rng=np.random.default_rng(0), hidden=0.6, density=0.1)
    assert np.array_equal(a.train, b.train)
    assert not (a.train & ~a.true_pref).any()  # no 0 -> 1 flips
    assert abs(a.true_pref.mean() - 0.1) < 0.01
    assert abs(a.hidden_fraction - 0.6) < 0.06
    assert 0 < a.hidden_among_unobserved < 0.1


def test_sampler_never_returns_a_training_positive():
    world = imf.make_world(30, 40, rng=np.random.default_rng(1), density=0.2)
    u, i, j = imf.sample_triplets(world.train, 4, np.random.default_rng(2))
    assert u.size == 4 * world.train.sum()
    assert world.train[u, i].all() and not world.train[u, j].any()


def test_recall_ndcg_perfect_and_excluding_training_items():
    train = np.zeros((2, 5), bool)
    train[:, 0] = True
    relevant = np.zeros((2, 5), bool)
    relevant[0, 1] = relevant[1, 2] = True
    scores = np.tile(np.array([9.0, 1, 2, 0, -1]), (2, 1))  # item 0 is excluded
    recall, ndcg = imf.recall_ndcg(scores, train, relevant, k=1)
    assert recall == pytest.approx(0.5) and ndcg == pytest.approx(0.5)
    recall, _ = imf.recall_ndcg(scores, train, relevant, k=2)
    assert recall == pytest.approx(1.0)


def test_fit_is_deterministic_and_unknown_method_fails():
    world = imf.make_world(20, 30, rng=np.random.default_rng(3), density=0.2)
    p1 = imf.fit("NBPO", world.train, rng=np.random.default_rng(4), k0=4, k1=4, epochs=2)
    p2 = imf.fit("NBPO", world.train, rng=np.random.default_rng(4), k0=4, k1=4, epochs=2)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    with pytest.raises(ValueError):
        imf.gradients("WARP", p1, np.array([0]), np.array([0]), np.array([1]))
