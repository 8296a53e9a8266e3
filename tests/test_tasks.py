import pytest
import torch

from noisefit_lib import tasks


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mqar_layout_and_answers():
    x, y = tasks.mqar_batch(16, 24, 4, 32, gen())
    assert x.shape == y.shape == (16, 24) and x.dtype == torch.long
    assert ((y != tasks.IGNORE).sum(1) == 4).all()
    for row_x, row_y in zip(x, y, strict=True):
        keys, values = row_x[0:8:2], row_x[1:8:2]
        assert len(set(keys.tolist())) == 4 and ((keys >= 1) & (keys < 16)).all()
        assert ((values >= 16) & (values < 32)).all()
        lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
        pos = (row_y != tasks.IGNORE).nonzero().flatten()
        assert sorted(row_x[pos].tolist()) == sorted(keys.tolist())  # every key queried once
        for p in pos.tolist():
            assert row_y[p].item() == lookup[row_x[p].item()] == row_x[p + 1].item()


def test_mqar_is_seeded_and_validates():
    a, b = tasks.mqar_batch(4, 16, 3, 20, gen(1)), tasks.mqar_batch(4, 16, 3, 20, gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], tasks.mqar_batch(4, 16, 3, 20, gen(2))[0])
    with pytest.raises(ValueError):
        tasks.mqar_batch(4, 10, 3, 20, gen())
    with pytest.raises(ValueError):
        tasks.mqar_batch(4, 40, 12, 20, gen())


def test_periodic_copy_without_noise_repeats_and_shifts():
    x, y = tasks.periodic_copy_batch(3, 20, 9, 5, 0.0, gen())
    assert x.shape == y.shape == (3, 20)
    torch.testing.assert_close(x[:, 5:], x[:, :-5])
    torch.testing.assert_close(y[:, :-1], x[:, 1:])


def test_periodic_copy_noise_rate():
    x, _ = tasks.periodic_copy_batch(200, 100, 50, 4, 0.3, gen())
    clean, _ = tasks.periodic_copy_batch(200, 100, 50, 4, 0.0, gen())
    differs = (x != clean).float().mean().item()  # same motif draws, then noise
    assert 0.25 < differs < 0.32  # 0.3 * (1 - 1/50)
    with pytest.raises(ValueError):
        tasks.periodic_copy_batch(2, 10, 5, 3, 1.0, gen())


def test_query_accuracy():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = logits[0, 2, 1] = 1.0
    targets = torch.tensor([[2, tasks.IGNORE, 3]])
    assert tasks.query_accuracy(logits, targets) == 0.5
    with pytest.raises(ValueError):
        tasks.query_accuracy(logits, torch.full((1, 3), tasks.IGNORE))
