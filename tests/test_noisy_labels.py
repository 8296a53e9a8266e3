import numpy as np
import pytest
import torch

from noisefit_lib import noisy_labels as nl


def labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def test_split_is_stratified_seeded_and_disjoint():
    a = nl.load_digits_split(rng=np.random.default_rng(0))
    b = nl.load_digits_split(rng=np.random.default_rng(0))
    c = nl.load_digits_split(rng=np.random.default_rng(1))
    sizes = (len(a.x_train), len(a.x_val), len(a.x_test))
    assert sum(sizes) == 1797 and sizes[2] == 540
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert torch.bincount(a.y_test).min() >= 50  # every class present in proportion
    rows = {tuple(r) for r in a.x_test.tolist()}
    assert sum(tuple(r) in rows for r in a.x_val.tolist()) <= 5  # digits has a few duplicates
    with pytest.raises(ValueError):
        nl.load_digits_split(rng=np.random.default_rng(0), val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8, 1.0])
def test_symmetric_realised_rate(rate):
    y = labels(5000)
    noisy = nl.symmetric_noise(y, rate, rng=np.random.default_rng(1))
    assert noisy.labels.shape == y.shape and noisy.labels.dtype == np.int64
    np.testing.assert_array_equal(noisy.corrupted, noisy.labels != y)
    assert noisy.realised_rate == pytest.approx(noisy.corrupted.mean())
    assert noisy.realised_rate == pytest.approx(rate * 0.9, abs=0.02)  # resampled over all classes


def test_asymmetric_follows_the_map_exactly():
    y = labels(2000)
    noisy = nl.asymmetric_noise(y, 0.4, rng=np.random.default_rng(2))
    changed = noisy.corrupted
    for source, dest in nl.DIGITS_FLIPS.items():
        members = y == source
        assert (noisy.labels[members & changed] == dest).all()
        assert changed[members].sum() == round(0.4 * members.sum())
    untouched = ~np.isin(y, list(nl.DIGITS_FLIPS))
    assert not changed[untouched].any()
    share = np.isin(y, list(nl.DIGITS_FLIPS)).mean()
    assert noisy.realised_rate == pytest.approx(0.4 * share, abs=0.01)


def test_instance_noise_targets_ambiguous_examples():
    split = nl.load_digits_split(rng=np.random.default_rng(0))
    x, y = split.x_train.numpy(), split.y_train.numpy()
    noisy = nl.instance_noise(x, y, 0.3, rng=np.random.default_rng(3))
    assert noisy.realised_rate == pytest.approx(round(0.3 * len(y)) / len(y))
    centroids = np.stack([x[y == c].mean(0) for c in range(10)])
    dist = np.linalg.norm(x[:, None] - centroids[None], axis=2)
    own = dist[np.arange(len(y)), y]
    dist[np.arange(len(y)), y] = np.inf
    assert (noisy.labels[noisy.corrupted] == dist.argmin(1)[noisy.corrupted]).all()
    ambiguity = own - dist.min(1)
    assert ambiguity[noisy.corrupted].mean() > ambiguity[~noisy.corrupted].mean()


@pytest.mark.parametrize("kind", nl.NOISE_KINDS)
def test_reproducible_by_seed(kind):
    a = nl.noisy_digits(kind, 0.4, rng=np.random.default_rng(7))
    b = nl.noisy_digits(kind, 0.4, rng=np.random.default_rng(7))
    c = nl.noisy_digits(kind, 0.4, rng=np.random.default_rng(8))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.corrupted, c.corrupted)
    assert torch.equal(a.corrupted, a.y_train != a.y_train_clean)


def test_unknown_kind_and_rate_fail():
    with pytest.raises(ValueError, match="symmetric, asymmetric, instance"):
        nl.corrupt("pairflip", np.zeros((3, 2)), np.zeros(3, int), 0.1, rng=np.random.default_rng())
    with pytest.raises(ValueError):
        nl.symmetric_noise(np.zeros(3, int), 1.5, rng=np.random.default_rng())


def test_mlp_is_seeded_by_its_generator():
    a = nl.mlp([32, 16], generator=torch.Generator().manual_seed(0))
    b = nl.mlp([32, 16], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert a(torch.zeros(5, 64)).shape == (5, 10)


def test_gce_limits():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    ce = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(nl.gce_loss(logits, y, q=1e-4), ce, rtol=1e-3, atol=1e-3)
    p_y = logits.softmax(1)[torch.arange(8), y]
    torch.testing.assert_close(nl.gce_loss(logits, y, q=1.0), (1 - p_y).mean())


def test_loop_hands_every_index_once_per_epoch_and_records_metrics():
    task = nl.noisy_digits("symmetric", 0.4, rng=np.random.default_rng(0))
    seen = []

    def loss_fn(logits, y, index):
        assert logits.shape == (len(index), 10) and torch.equal(y, task.y_train[index])
        seen.append(index.clone())
        return torch.nn.functional.cross_entropy(logits, y)

    model = nl.mlp([16], generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = nl.train_with_indices(
        model, loss_fn, opt, task, epochs=3, batch_size=100,
        generator=torch.Generator().manual_seed(0), eval_every=2,
    )  # fmt: skip
    assert [row["epoch"] for row in history] == [0.0, 2.0, 3.0]
    per_epoch = -(-len(task.x_train) // 100)
    assert len(seen) == 3 * per_epoch
    for epoch in range(3):
        got = torch.cat(seen[epoch * per_epoch : (epoch + 1) * per_epoch]).sort().values
        assert torch.equal(got, torch.arange(len(task.x_train)))
    for row in history:
        for key in ("test_acc", "val_acc", "train_fit", "memorised", "corrected"):
            assert 0.0 <= row[key] <= 1.0
        assert row["memorised"] + row["corrected"] <= 1.0


def test_memorised_and_corrected_are_what_they_say():
    task = nl.noisy_digits("symmetric", 0.5, rng=np.random.default_rng(0))

    class Oracle(torch.nn.Module):  # predicts a fixed label vector for the training inputs
        def __init__(self, labels):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.labels = labels

        def forward(self, x):
            if len(x) == len(task.x_train) and torch.equal(x, task.x_train):
                return torch.nn.functional.one_hot(self.labels, 10).float()
            return torch.zeros(len(x), 10)

    assert nl.evaluate(Oracle(task.y_train), task)["memorised"] == 1.0
    clean = nl.evaluate(Oracle(task.y_train_clean), task)
    assert clean["corrected"] == 1.0 and clean["memorised"] == 0.0


def test_elr_target_update_and_loss_by_hand():
    loss = nl.ELRLoss(4, 3, beta=0.5, lam=2.0)
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    index = torch.tensor([2, 0])
    value = loss(logits, torch.tensor([0, 1]), index)
    p = logits.softmax(1)
    torch.testing.assert_close(loss.target[index], 0.5 * p)
    assert loss.target[[1, 3]].abs().sum() == 0
    expected = (
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
        + 2.0 * torch.log(1 - (0.5 * p * p).sum(1)).mean()
    )
    torch.testing.assert_close(value, expected)
