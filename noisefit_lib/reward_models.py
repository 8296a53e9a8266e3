"""Part III's reward-model workbench: noisy preference pairs with a known nonlinear reward.

* :func:`make_task`: items with Gaussian features phi (from :func:`preferences.make_bandit`), a
  hidden true reward r*(phi) = beta w . tanh(U phi) (a random one-layer teacher), Bradley-Terry
  training pairs with injected flips (:func:`preferences.sample_pairs`) and clean test pairs
  ordered by the true reward (a :class:`RewardTask`);
* :func:`reward_mlp` and :func:`pair_losses`: an MLP reward model r_theta(phi) and the per-pair
  Bradley-Terry loss -log sigmoid(r_theta(winner) - r_theta(loser));
* :func:`keep_fraction` (the curriculum of the kept fraction, 1 -> 1 - tau over a ramp) and
  :func:`small_loss_select` (the indices of the smallest losses of a batch);
* :func:`train`: one method on one task (``all``, ``self``, ``crm`` or ``clean``), with the
  clean-pair accuracy per recorded epoch and the precision and recall of the kept pairs;
* :func:`clean_pair_accuracy` and :func:`kept_quality`.

Explained in: notebooks/part3_noisy_labels/20_collaborative_reward_modeling.py
(cite: zhang2025twominds).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from noisefit_lib import preferences

METHODS = ("all", "self", "crm", "clean")


@dataclass(frozen=True)
class RewardTask:
    """Training pairs as labelled (``x_win`` preferred to ``x_lose``) and clean test pairs.

    Attributes:
        x_win, x_lose: learner features of the labelled winner and loser, shape (n, d).
        flipped: True where the pair's label was flipped by the injected noise, shape (n,).
        bt_wrong: True where the unflipped Bradley-Terry label disagrees with r*, shape (n,).
        test_better, test_worse: test pairs, the truly better item first, shape (m, d).
    """

    x_win: torch.Tensor
    x_lose: torch.Tensor
    flipped: torch.Tensor
    bt_wrong: torch.Tensor
    test_better: torch.Tensor
    test_worse: torch.Tensor

    @property
    def realised_rate(self) -> float:
        """The share of training pairs whose label was flipped."""
        return float(self.flipped.float().mean())


def _teacher_bandit(
    rng: np.random.Generator, u: np.ndarray, w: np.ndarray, beta: float, **kw: int
) -> tuple[np.ndarray, preferences.Bandit]:
    """Item features phi and a bandit whose linear reward on tanh(U phi) is r*."""
    phi = preferences.make_bandit(rng, **kw).features
    return phi, preferences.Bandit(np.tanh(phi @ u.T), w, np.zeros(phi.shape[:2]), beta)


def make_task(
    rng: np.random.Generator,
    *,
    n_train: int = 2000,
    n_test: int = 2000,
    flip_rate: float = 0.2,
    dim: int = 8,
    teacher_width: int = 16,
    beta: float = 4.0,
    n_contexts: int = 200,
    n_actions: int = 10,
) -> RewardTask:
    """A seeded task: train pairs on one pool of items, test pairs on a fresh pool.

    The true reward is r*(phi) = beta w . tanh(U phi), with U of shape (teacher_width, dim)
    and |w| = 1; each training label is Bradley-Terry in r*, then flipped with ``flip_rate``.
    """
    u = rng.standard_normal((teacher_width, dim)) * (2.0 / math.sqrt(dim))
    w = rng.standard_normal(teacher_width)
    w /= np.linalg.norm(w)
    pool = {"n_contexts": n_contexts, "n_actions": n_actions, "dim": dim}
    phi, bandit = _teacher_bandit(rng, u, w, beta, **pool)
    pairs = preferences.sample_pairs(bandit, n_train, flip_rate, rng)
    r = bandit.rewards()
    true_margin = r[pairs.context, pairs.winner] - r[pairs.context, pairs.loser]
    bt_wrong = (true_margin < 0) ^ pairs.flipped
    phi_t, bandit_t = _teacher_bandit(rng, u, w, beta, **pool)
    test = preferences.sample_pairs(bandit_t, n_test, 0.0, rng)
    r_t = bandit_t.rewards()
    swap = r_t[test.context, test.winner] < r_t[test.context, test.loser]
    better = np.where(swap, test.loser, test.winner)
    worse = np.where(swap, test.winner, test.loser)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    return RewardTask(
        x_win=tensor(phi[pairs.context, pairs.winner]),
        x_lose=tensor(phi[pairs.context, pairs.loser]),
        flipped=torch.as_tensor(pairs.flipped),
        bt_wrong=torch.as_tensor(bt_wrong),
        test_better=tensor(phi_t[test.context, better]),
        test_worse=tensor(phi_t[test.context, worse]),
    )


def reward_mlp(dim: int, hidden: int, depth: int = 2, *, generator: torch.Generator) -> nn.Module:
    """An MLP phi -> r_theta(phi) (ReLU, ``depth`` hidden layers), seeded by ``generator``."""
    sizes = [dim] + [hidden] * depth
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 1))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            bound = 1 / math.sqrt(p.shape[-1]) if p.dim() == 2 else 0.05
            p.uniform_(-bound, bound, generator=generator)
    return model


def pair_losses(model: nn.Module, x_win: torch.Tensor, x_lose: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigmoid(r(x_win) - r(x_lose)), shape (n,)."""
    margin = (model(x_win) - model(x_lose)).squeeze(-1)
    return -F.logsigmoid(margin)


def keep_fraction(epoch: int, tau: float, ramp_epochs: int) -> float:
    """The curriculum: keep 1 - tau min(1, epoch / ramp_epochs) of each batch (epoch from 0)."""
    if ramp_epochs <= 0:
        return 1.0 - tau
    return 1.0 - tau * min(1.0, epoch / ramp_epochs)


def small_loss_select(losses: torch.Tensor, keep: float) -> torch.Tensor:
    """Indices of the ceil(keep * n) smallest ``losses`` (ties broken by position)."""
    k = max(1, math.ceil(keep * losses.numel() - 1e-9))
    order = torch.sort(losses.detach(), stable=True).indices
    return order[:k]


def kept_quality(flipped: torch.Tensor, kept: torch.Tensor) -> tuple[int, int, int]:
    """(clean kept, kept, clean) for one batch: precision = a / b, recall = a / c."""
    clean_kept = int((~flipped[kept]).sum())
    return clean_kept, int(kept.numel()), int((~flipped).sum())


@torch.no_grad()
def clean_pair_accuracy(model: nn.Module, task: RewardTask) -> float:
    """The share of clean test pairs that the model orders as the true reward does."""
    margin = model(task.test_better) - model(task.test_worse)
    return float((margin > 0).float().mean())


@torch.no_grad()
def memorised(model: nn.Module, task: RewardTask) -> float:
    """The share of flipped training pairs whose (wrong) label the model reproduces."""
    if not bool(task.flipped.any()):
        return float("nan")
    x_w, x_l = task.x_win[task.flipped], task.x_lose[task.flipped]
    return float(((model(x_w) - model(x_l)) > 0).float().mean())


def train(
    task: RewardTask,
    method: str,
    *,
    tau: float,
    ramp_epochs: int,
    epochs: int,
    hidden: int,
    batch_size: int,
    lr: float,
    seed_init: tuple[torch.Generator, torch.Generator],
    batches: torch.Generator,
    eval_every: int = 1,
) -> tuple[list[dict[str, float]], nn.Module]:
    """Train one method; return (per-epoch history, the evaluated model).

    ``all`` fits every pair; ``self`` keeps its own small-loss pairs; ``crm`` trains two models,
    each on the small-loss pairs chosen by the *other* (peer review); ``clean`` fits the unflipped
    pairs only. Both filters keep :func:`keep_fraction` of each batch. The first generator of
    ``seed_init`` initialises the evaluated model (model A for ``crm``), the second model B.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    dim = task.x_win.shape[1]
    n_models = 2 if method == "crm" else 1
    models = [reward_mlp(dim, hidden, generator=g) for g in seed_init[:n_models]]
    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in models]
    pool = torch.arange(len(task.flipped))
    if method == "clean":
        pool = pool[~task.flipped]
    history = []
    for epoch in range(epochs):
        keep = keep_fraction(epoch, tau, ramp_epochs) if method in ("self", "crm") else 1.0
        counts = np.zeros(3)
        order = pool[torch.randperm(len(pool), generator=batches)]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xw, xl, fl = task.x_win[idx], task.x_lose[idx], task.flipped[idx]
            losses = [pair_losses(m, xw, xl) for m in models]
            if method == "crm":  # A learns from what B keeps, B from what A keeps
                picks = [small_loss_select(losses[1], keep), small_loss_select(losses[0], keep)]
            elif method == "self":
                picks = [small_loss_select(losses[0], keep)]
            else:
                picks = [torch.arange(len(idx))]
            for opt, loss, kept in zip(opts, losses, picks, strict=True):
                opt.zero_grad()
                loss[kept].mean().backward()
                opt.step()
                counts += kept_quality(fl, kept)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            history.append(
                {
                    "epoch": epoch + 1,
                    "keep": keep,
                    "test_acc": clean_pair_accuracy(models[0], task),
                    "precision": counts[0] / counts[1],
                    "recall": counts[0] / counts[2] if counts[2] else float("nan"),
                }
            )
    return history, models[0]
