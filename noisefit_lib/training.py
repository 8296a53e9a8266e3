"""The book's training loop family: one seeded loop, one optimiser step, one learning-rate schedule.

* :func:`train`: the small, seeded loop that records a history (the softmax chapters);
* :func:`optimizer_step`: clear the gradients, back-propagate, clip, step: the step that
  :func:`train`, :func:`noisefit_lib.nanogpt.train_lm` and Part I's pretraining
  (:func:`noisefit_lib.facts_llama.pretrain`) share;
* :func:`warmup_cosine_lr` (with :func:`set_lr`): linear warm-up, then cosine decay to an
  optional floor: the one schedule of those loops;
* :func:`pad`: token lists to a padded ``(input_ids, attention_mask)`` batch.

Every chapter that trains a model writes the same six lines (draw a batch, forward, loss,
backward, step, log now and then). :func:`train` is those lines, once, with two guarantees the
chapters rely on: batches come from an explicit ``generator`` (so a run is repeatable and the
data order does not depend on the model), and the history holds plain floats (so it can go
straight into a results file)::

    history = training.train(model, loss_fn, optimizer, x, y, num_steps=500, batch_size=128,
                             generator=runtime.stream(seed, "batches"), eval_every=50,
                             evaluate=lambda m: {"test_acc": accuracy(m)})
    history[-1]   # {"step": 500, "loss": 0.41, "test_acc": 0.93}

Explained in: notebooks/part2_softmax/08_z_loss.py and 09_stablemax_grokking.py (Experiment);
the schedule and the padded batches in notebooks/part1_noisefit/01_a_world_we_can_check.py
(pretraining) and 05_noisefit_end_to_end.py (fine-tuning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

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
        loss = loss_fn(model(x), y)
        optimizer_step(optimizer, loss)
        if (eval_every and step % eval_every == 0) or step == num_steps:
            if not history or history[-1]["step"] != step:
                history.append(record(step, float(loss.detach())))
    return history


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    *,
    clip_params: Iterable[torch.nn.Parameter] | None = None,
    max_grad_norm: float = 0.0,
) -> None:
    """One optimiser step on ``loss``: clear the gradients, back-propagate, clip, step.

    Args:
        optimizer: the optimizer (or a wrapper with ``zero_grad`` and ``step``).
        loss: the scalar loss of this step's batch.
        clip_params: the parameters whose gradient norm is clipped (needed when clipping).
        max_grad_norm: clip their total gradient norm to this; ``0`` does not clip.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        if clip_params is None:
            raise ValueError("max_grad_norm > 0 needs clip_params")
        torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
    optimizer.step()


def warmup_cosine_lr(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, floor: float = 0.0
) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to a floor.

    The first ``warmup_steps`` steps rise linearly to ``peak_lr`` (step 0 gets
    ``peak_lr / warmup_steps``); the remaining steps follow half a cosine from ``peak_lr``
    down to ``floor * peak_lr``, reached at ``total_steps``.

    Args:
        step: the optimizer step, from 0.
        peak_lr: the learning rate at the end of the warm-up.
        warmup_steps: steps of linear warm-up (0: start at the peak).
        total_steps: the run's length in steps.
        floor: the final learning rate as a fraction of ``peak_lr``.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def pad(
    sequences: Sequence[Sequence[int]], *, side: str = "right", pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into ``(input_ids, attention_mask)``, both long tensors of shape (B, T).

    Args:
        sequences: token ids per row.
        side: ``"right"`` (training batches) or ``"left"`` (prompts for generation).
        pad_id: the id written into padding positions (0 is ``<pad>`` of Part I's tokenizer).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def column(history: list[dict[str, float]], key: str) -> list[float]:
    """The values of one metric across a history, in step order."""
    missing = [row["step"] for row in history if key not in row]
    if missing:
        raise KeyError(f"{key!r} missing from history rows at steps {missing[:5]}")
    return [row[key] for row in history]
