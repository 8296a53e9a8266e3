"""Unit tests of noisefit_lib.reward_models (chapter 20, collaborative reward modeling)."""

import math

import numpy as np
import pytest
import torch

from noisefit_lib import reward_models as rm


def task(flip=0.3, seed=0, **kw):
    return rm.make_task(np.random.default_rng(seed), n_train=400, n_test=300, flip_rate=flip, **kw)


def test_task_is_seeded_flips_at_the_rate_and_orders_test_pairs():
    a, b = task(), task()
    assert torch.equal(a.x_win, b.x_win) and torch.equal(a.flipped, b.flipped)
    assert a.x_win.shape == (400, 8) and a.test_better.shape == (300, 8)
    assert abs(a.realised_rate - 0.3) < 0.08
    assert task(flip=0.0).realised_rate == 0.0
    # the Bradley-Terry labels of unflipped pairs mostly agree with the true reward
    assert a.bt_wrong.float().mean() < 0.2


def test_pair_losses_are_bradley_terry():
    model = rm.reward_mlp(4, 8, generator=torch.Generator().manual_seed(0))
    x_w, x_l = torch.randn(6, 4), torch.randn(6, 4)
    margin = (model(x_w) - model(x_l)).squeeze(-1)
    expected = torch.log1p(torch.exp(-margin))
    assert torch.allclose(rm.pair_losses(model, x_w, x_l), expected, atol=1e-6)
    assert torch.allclose(rm.pair_losses(model, x_l, x_w), expected + margin, atol=1e-5)


def test_keep_fraction_ramps_then_stays():
    assert rm.keep_fraction(0, 0.4, 10) == 1.0
    assert math.isclose(rm.keep_fraction(5, 0.4, 10), 0.8)
    assert math.isclose(rm.keep_fraction(50, 0.4, 10), 0.6)
    assert math.isclose(rm.keep_fraction(0, 0.4, 0), 0.6)


def test_small_loss_select_keeps_the_smallest_and_at_least_one():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert rm.small_loss_select(losses, 0.4).tolist() == [1, 3]
    assert rm.small_loss_select(losses, 0.0).tolist() == [1]
    assert sorted(rm.small_loss_select(losses, 1.0).tolist()) == [0, 1, 2, 3, 4]


def test_kept_quality_counts():
    flipped = torch.tensor([True, False, False, True])
    assert rm.kept_quality(flipped, torch.tensor([1, 3])) == (1, 2, 2)


def run(method, t, tau):
    return rm.train(
        t,
        method,
        tau=tau,
        ramp_epochs=2,
        epochs=6,
        hidden=32,
        batch_size=50,
        lr=3e-3,
        seed_init=(torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)),
        batches=torch.Generator().manual_seed(3),
        eval_every=3,
    )


def test_filters_reduce_to_one_model_without_noise():
    t = task(flip=0.0)
    accs = {m: [r["test_acc"] for r in run(m, t, 0.0)[0]] for m in ("all", "self", "crm")}
    assert accs["all"] == accs["self"] == accs["crm"]


def test_filters_keep_cleaner_pairs_than_random_and_clean_is_pure():
    t = task(flip=0.4)
    hist = {m: run(m, t, 0.4)[0] for m in rm.METHODS}
    assert hist["clean"][-1]["precision"] == 1.0
    assert abs(hist["all"][-1]["precision"] - (1 - t.realised_rate)) < 1e-6
    for m in ("self", "crm"):
        assert hist[m][-1]["keep"] == pytest.approx(0.6)
        assert hist[m][-1]["precision"] > 1 - t.realised_rate
    assert 0 <= rm.memorised(run("all", t, 0.4)[1], t) <= 1
    with pytest.raises(ValueError):
        run("nope", t, 0.4)
