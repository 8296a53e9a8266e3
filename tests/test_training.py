"""noisefit_lib.training: the seeded loop, the shared optimiser step, the one learning-rate
schedule and padded batches."""

import itertools
import math

import pytest
import torch

from noisefit_lib import training


def _regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256, generator=gen)
    return x, y


def _run(batch_size, seed=0, num_steps=60, eval_every=20):
    torch.manual_seed(seed)
    x, y = _regression()
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = training.train(
        model,
        lambda out, t: ((out.squeeze(-1) - t) ** 2).mean(),
        optimizer,
        x,
        y,
        num_steps=num_steps,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        eval_every=eval_every,
        evaluate=lambda m: {"mse": ((m(x).squeeze(-1) - y) ** 2).mean()},
    )
    return model, history


@pytest.mark.parametrize("batch_size", [None, 16])
def test_loss_falls_and_history_has_the_requested_steps(batch_size):
    _, history = _run(batch_size)
    assert training.column(history, "step") == [0, 20, 40, 60]
    assert math.isnan(history[0]["loss"])
    mse = training.column(history, "mse")
    assert mse[-1] < 0.05 * mse[0]
    assert all(isinstance(v, float) for row in history for v in row.values())


def test_same_seed_same_run_bitwise():
    model_a, history_a = _run(16, seed=3)
    model_b, history_b = _run(16, seed=3)
    assert history_a == history_b
    assert torch.equal(model_a.weight, model_b.weight)


def test_different_batch_seed_different_run():
    _, history_a = _run(16, seed=1)
    _, history_b = _run(16, seed=2)
    assert history_a[-1]["mse"] != history_b[-1]["mse"]


def test_eval_every_zero_records_only_the_end_and_model_stays_in_train_mode():
    model, history = _run(8, num_steps=7, eval_every=0)
    assert [row["step"] for row in history] == [7]
    assert model.training


def test_last_step_recorded_once_when_it_is_a_multiple():
    _, history = _run(None, num_steps=40, eval_every=20)
    assert training.column(history, "step") == [0, 20, 40]


def test_progress_bar_runs(capsys):
    _run(None, num_steps=3, eval_every=1)
    model = torch.nn.Linear(1, 1)
    training.train(
        model,
        lambda out, t: out.sum() * 0 + t.sum() * 0,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.zeros(2, 1),
        torch.zeros(2),
        num_steps=2,
        generator=torch.Generator(),
        progress=True,
        desc="test",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_every": -1}, "eval_every"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    model = torch.nn.Linear(1, 1)
    args = {"num_steps": 1, "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=message):
        training.train(
            model,
            torch.nn.functional.mse_loss,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            **args,
        )


def test_length_mismatch_and_missing_column_raise():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="targets"):
        training.train(
            model,
            torch.nn.functional.mse_loss,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.zeros(3, 1),
            torch.zeros(2, 1),
            num_steps=1,
            generator=torch.Generator(),
        )
    with pytest.raises(KeyError, match="acc"):
        training.column([{"step": 0.0, "loss": 1.0}], "acc")


def test_warmup_cosine_schedule_with_and_without_floor():
    lrs = [
        training.warmup_cosine_lr(s, peak_lr=1e-3, warmup_steps=10, total_steps=100)
        for s in range(100)
    ]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert training.warmup_cosine_lr(100, peak_lr=1e-3, warmup_steps=10, total_steps=100) == 0.0
    floored = training.warmup_cosine_lr(
        100, peak_lr=1e-3, warmup_steps=10, total_steps=100, floor=0.1
    )
    assert floored == pytest.approx(1e-4)
    no_warmup = training.warmup_cosine_lr(0, peak_lr=1e-3, warmup_steps=0, total_steps=10)
    assert no_warmup == 1e-3


def test_optimizer_step_clips_only_when_asked():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    loss = 1000 * model(torch.ones(1, 3)).sum()
    training.optimizer_step(
        optimizer, loss, clip_params=list(model.parameters()), max_grad_norm=1.0
    )
    assert torch.linalg.vector_norm(model.weight.detach() - before) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="clip_params"):
        training.optimizer_step(optimizer, model(torch.ones(1, 3)).sum(), max_grad_norm=1.0)


def test_pad_left_and_right():
    ids, mask = training.pad([[5, 6, 7], [8]], side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = training.pad([[5, 6, 7], [8]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        training.pad([[1]], side="middle")
