"""A small, seeded training loop that records a history: the one the softmax chapters share.

Every chapter that trains a model writes the same six lines (draw a batch, forward, loss,
backward, step, log now and then). :func:`train` is those lines, once, with two guarantees the
chapters rely on: batches come from an explicit ``generator`` (so a run is repeatable and the
data order does not depend on the model), and the history holds plain floats (so it can go
straight into a results file)::

    history = training.train(model, loss_fn, optimizer, x, y, num_steps=500, batch_size=128,
                             generator=runtime.stream(seed, "batches"), eval_every=50,
                             evaluate=lambda m: {"test_acc": accuracy(m)})
    history[-1]   # {"step": 500, "loss": 0.41, "test_acc": 0.93}

Explained in: notebooks/part2_softmax/08_z_loss.py and 09_stablemax_grokking.py (Experiment).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Evaluate = Callable[[torch.nn.Module], Mapping[str, float]]


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_steps: int,
    generator: torch.Generator,
    batch_size: int | None = None,
    eval_every: int = 0,
    evaluate: Evaluate | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``num_steps`` optimizer steps and return its history.

    Each step draws ``batch_size`` examples uniformly with replacement (``None``: the full batch,
    in its stored order, as in full-batch gradient descent), computes
    ``loss_fn(model(inputs[idx]), targets[idx])``, back-propagates and calls
    ``optimizer.step()``.

    Args:
        model: the module to train; it is left in train mode.
        loss_fn: ``(outputs, targets) -> scalar loss``.
        optimizer: an optimizer over ``model``'s parameters (or a wrapper with ``step`` and
            ``zero_grad``).
        inputs: examples, shape (N, ...), on the model's device.
        targets: labels or regression targets, shape (N, ...), same device.
        num_steps: number of optimizer steps, at least 1.
        generator: a CPU generator that draws the minibatch indices (unused for full batch).
        batch_size: examples per step; ``None`` for the full batch.
        eval_every: record a history row every ``eval_every`` steps (and at step 0 and the last
            step); 0 records only the last step.
        evaluate: ``model -> {name: value}``, called under ``torch.no_grad()`` in eval mode for
            every recorded row.
        progress: show a tqdm progress bar.
        desc: the progress bar's label.

    Returns:
        One dict per recorded step: ``step`` (optimizer steps taken so far), ``loss`` (the
        training loss of the latest batch, NaN at step 0) and whatever ``evaluate`` returned.

    Raises:
        ValueError: for ``num_steps < 1``, ``batch_size < 1``, ``eval_every < 0`` or inputs and
            targets of different lengths.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 or None, got {batch_size}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be 0 (only the end) or positive, got {eval_every}")
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")

    def record(step: int, loss: float) -> dict[str, float]:
        row = {"step": float(step), "loss": loss}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update({k: float(v) for k, v in evaluate(model).items()})
            model.train()
        return row

    steps = range(1, num_steps + 1)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=desc, leave=False)
    history = [record(0, math.nan)] if eval_every else []
    model.train()
    for step in steps:
        if batch_size is None:
            x, y = inputs, targets
        else:
            idx = torch.randint(len(inputs), (batch_size,), generator=generator)
            idx = idx.to(inputs.device)
            x, y = inputs[idx], targets[idx]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if (eval_every and step % eval_every == 0) or step == num_steps:
            if not history or history[-1]["step"] != step:
                history.append(record(step, float(loss.detach())))
    return history


def column(history: list[dict[str, float]], key: str) -> list[float]:
    """The values of one metric across a history, in step order."""
    missing = [row["step"] for row in history if key not in row]
    if missing:
        raise KeyError(f"{key!r} missing from history rows at steps {missing[:5]}")
    return [row[key] for row in history]
