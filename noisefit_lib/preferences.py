"""Part III's preference workbench: a log-linear bandit with a known optimum and noisy pairs.

* :func:`make_bandit`: contexts, Gaussian features phi(s, a), a reference policy and a true
  parameter theta* (a :class:`Bandit`); the policy pi_theta(a|s) is proportional to
  pi_ref(a|s) exp(theta . phi(s, a)), and the reward r*(s, a) = beta theta* . phi(s, a) makes
  pi_theta* the maximiser of the KL-regularised value (:func:`value`);
* :func:`sample_pairs`: Bradley-Terry preference pairs drawn from a sampling policy, each label
  flipped with a given rate, from an explicit NumPy generator (:class:`Pairs`; a reward model
  can use them as they are); :func:`pair_features` gives x = phi(winner) - phi(loser);
* :func:`dpo_loss`, :func:`cdpo_loss` (conservative DPO, label smoothing) and :func:`rdpo_loss`
  (robust DPO) on the implicit-reward margin h = theta . x, with their gradient weights;
* :func:`fit` (damped Newton with an optional L2 guard and a divergence stop) and
  :func:`gradient_descent` (the trajectory of the parameter norm);
* :func:`recession_slope`: a linear programme that decides whether rDPO's empirical loss is
  unbounded below on a data set;
* :func:`value`, :func:`expected_reward`, :func:`kl_to_ref`, :func:`frontier_reward` and
  :func:`param_error`: what a fitted policy is worth.

Explained in: notebooks/part3_noisy_labels/19_robust_dpo.py (cite: chowdhury2024provably).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.special import expit, log_expit, logsumexp

METHODS = ("DPO", "cDPO", "rDPO")


@dataclass(frozen=True)
class Bandit:
    """A contextual log-linear bandit.

    Attributes:
        features: phi(s, a), shape (contexts, actions, dim).
        theta_star: the true parameter, shape (dim,).
        ref_logits: log pi_ref(a|s) up to a constant per context, shape (contexts, actions).
        beta: the KL weight of the value and of the DPO losses.
    """

    features: np.ndarray
    theta_star: np.ndarray
    ref_logits: np.ndarray
    beta: float

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.features.shape[2])

    def rewards(self) -> np.ndarray:
        """r*(s, a) = beta theta* . phi(s, a), shape (contexts, actions)."""
        return self.beta * self.features @ self.theta_star


@dataclass(frozen=True)
class Pairs:
    """Preference pairs as observed: ``winner`` was labelled preferred to ``loser``.

    ``flipped`` marks the pairs whose Bradley-Terry label was flipped (unknown to a learner).
    """

    context: np.ndarray
    winner: np.ndarray
    loser: np.ndarray
    flipped: np.ndarray

    def __len__(self) -> int:
        return int(self.context.size)


def make_bandit(
    rng: np.random.Generator,
    *,
    n_contexts: int = 100,
    n_actions: int = 10,
    dim: int = 10,
    theta_norm: float = 2.0,
    beta: float = 1.0,
) -> Bandit:
    """Standard-normal features, a uniform reference policy and theta* of norm ``theta_norm``."""
    features = rng.standard_normal((n_contexts, n_actions, dim))
    direction = rng.standard_normal(dim)
    theta_star = theta_norm * direction / np.linalg.norm(direction)
    return Bandit(features, theta_star, np.zeros((n_contexts, n_actions)), float(beta))


def policy_logits(bandit: Bandit, theta: np.ndarray) -> np.ndarray:
    """The log-policy log pi_theta(a|s), normalised per context, shape (contexts, actions)."""
    logits = bandit.ref_logits + bandit.features @ theta
    return logits - logsumexp(logits, axis=1, keepdims=True)


def sample_pairs(
    bandit: Bandit,
    n: int,
    flip_rate: float,
    rng: np.random.Generator,
    *,
    sampling_logits: np.ndarray | None = None,
) -> Pairs:
    """``n`` pairs of distinct actions from the sampling policy (default pi_ref), BT-labelled.

    The label says a1 beats a2 with probability sigmoid(r*(s, a1) - r*(s, a2)); then each label
    is flipped independently with probability ``flip_rate``.
    """
    if not 0 <= flip_rate < 0.5:
        raise ValueError(f"flip_rate must lie in [0, 0.5), got {flip_rate}")
    logits = (
        policy_logits(bandit, np.zeros(bandit.dim))
        if sampling_logits is None
        else (sampling_logits - logsumexp(sampling_logits, axis=1, keepdims=True))
    )
    n_contexts, n_actions = logits.shape
    context = rng.integers(n_contexts, size=n)
    # Gumbel top-2 draws two distinct actions without replacement from the policy.
    keys = logits[context] + rng.gumbel(size=(n, n_actions))
    top2 = np.argsort(-keys, axis=1)[:, :2]
    a1, a2 = top2[:, 0], top2[:, 1]
    r = bandit.rewards()
    prefer_a1 = rng.random(n) < expit(r[context, a1] - r[context, a2])
    flipped = rng.random(n) < flip_rate
    a1_wins = prefer_a1 ^ flipped
    winner, loser = np.where(a1_wins, a1, a2), np.where(a1_wins, a2, a1)
    return Pairs(context, winner, loser, flipped)


def pair_features(bandit: Bandit, pairs: Pairs) -> np.ndarray:
    """Pair features x = phi(s, winner) - phi(s, loser), shape (n, dim); margin h = theta . x."""
    return (
        bandit.features[pairs.context, pairs.winner] - bandit.features[pairs.context, pairs.loser]
    )


def dpo_loss(h: np.ndarray, beta: float) -> np.ndarray:
    """Per-pair DPO loss -log sigmoid(beta h)."""
    return -log_expit(beta * h)


def cdpo_loss(h: np.ndarray, beta: float, eps: float) -> np.ndarray:
    """Conservative DPO: (1 - eps) l(h) + eps l(-h), the label-smoothed loss."""
    return (1 - eps) * dpo_loss(h, beta) + eps * dpo_loss(-h, beta)


def rdpo_loss(h: np.ndarray, beta: float, eps: float) -> np.ndarray:
    """Robust DPO: [(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps), unbiased for the clean loss."""
    return ((1 - eps) * dpo_loss(h, beta) - eps * dpo_loss(-h, beta)) / (1 - 2 * eps)


def loss_fn(method: str, beta: float, eps: float) -> Callable[[np.ndarray], np.ndarray]:
    """The per-pair loss of ``method`` (DPO, cDPO or rDPO) as a function of the margin."""
    if method == "DPO":
        return lambda h: dpo_loss(h, beta)
    if method == "cDPO":
        return lambda h: cdpo_loss(h, beta, eps)
    if method == "rDPO":
        return lambda h: rdpo_loss(h, beta, eps)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def loss_weight(method: str, h: np.ndarray, beta: float, eps: float) -> np.ndarray:
    """Weight zeta in d loss / d h = -beta zeta; rDPO: [(1-e) s(-bh) + e s(bh)] / (1 - 2e)."""
    lo, hi = expit(-beta * h), expit(beta * h)
    if method == "DPO":
        return lo
    if method == "cDPO":
        return (1 - eps) * lo - eps * hi
    if method == "rDPO":
        return ((1 - eps) * lo + eps * hi) / (1 - 2 * eps)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


@dataclass(frozen=True)
class Fit:
    """A fitted parameter, whether it ran away (|theta| > max_norm), whether it converged."""

    theta: np.ndarray
    diverged: bool
    converged: bool
    iterations: int


def objective(
    x: np.ndarray, theta: np.ndarray, method: str, beta: float, eps: float, l2: float = 0.0
) -> float:
    """Mean per-pair loss plus (l2 / 2) |theta|^2."""
    return float(loss_fn(method, beta, eps)(x @ theta).mean() + 0.5 * l2 * theta @ theta)


def fit(
    x: np.ndarray,
    method: str,
    *,
    beta: float,
    eps: float = 0.0,
    l2: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-8,
    max_norm: float = 1e3,
) -> Fit:
    """Minimise :func:`objective` from theta = 0 by damped Newton steps (backtracking).

    All three losses have the same Hessian, beta^2 mean(s(bh) s(-bh) x x^T) + l2 I, so they are
    convex; rDPO's can still be unbounded below. The fit stops as ``diverged`` when |theta|
    passes ``max_norm``; ``converged`` says whether the gradient norm fell below ``tol``.
    """
    n, d = x.shape
    theta = np.zeros(d)
    for it in range(1, max_iter + 1):
        h = x @ theta
        grad = -beta * (loss_weight(method, h, beta, eps) @ x) / n + l2 * theta
        if np.linalg.norm(grad) < tol:
            return Fit(theta, False, True, it)
        curv = beta**2 * expit(beta * h) * expit(-beta * h)
        hess = (x * curv[:, None]).T @ x / n + (l2 + 1e-12) * np.eye(d)
        step = np.linalg.solve(hess, grad)
        f0, t = objective(x, theta, method, beta, eps, l2), 1.0
        while t > 1e-8 and objective(x, theta - t * step, method, beta, eps, l2) > f0 - (
            0.25 * t * grad @ step
        ):
            t /= 2
        theta = theta - t * step
        if np.linalg.norm(theta) > max_norm:
            return Fit(theta, True, False, it)
    return Fit(theta, False, False, max_iter)


def gradient_descent(
    x: np.ndarray,
    method: str,
    *,
    beta: float,
    eps: float = 0.0,
    l2: float = 0.0,
    lr: float = 0.5,
    steps: int = 500,
) -> np.ndarray:
    """Full-batch gradient descent from 0; the parameters after each step, shape (steps, d)."""
    n, d = x.shape
    theta, path = np.zeros(d), np.empty((steps, d))
    for k in range(steps):
        grad = -beta * (loss_weight(method, x @ theta, beta, eps) @ x) / n + l2 * theta
        theta = theta - lr * grad
        path[k] = theta
    return path


def recession_slope(x: np.ndarray, eps: float) -> float:
    """The max over |v|_inf <= 1 of the slope of rDPO's summed loss along v at infinity (/ beta).

    Along theta = t v, a pair with u = v . x > 0 loses eps u / (1 - 2 eps) per unit of t and one
    with u < 0 gains (1 - eps) |u| / (1 - 2 eps), so the loss is unbounded below exactly when
    some v makes eps sum(u+) - (1 - eps) sum(u-) positive. Solved as a linear programme in
    (v, u+, u-); returns the maximum, > 0 iff unbounded (scaled by 1 / (1 - 2 eps)).
    """
    n, d = x.shape
    c = np.concatenate([np.zeros(d), -eps * np.ones(n), (1 - eps) * np.ones(n)])
    a_eq = np.hstack([x, -np.eye(n), np.eye(n)])
    bounds = [(-1, 1)] * d + [(0, None)] * (2 * n)
    out = linprog(c, A_eq=a_eq, b_eq=np.zeros(n), bounds=bounds, method="highs")
    if out.status != 0:
        raise RuntimeError(f"linprog failed: {out.message}")
    return float(-out.fun / (1 - 2 * eps))


def expected_reward(bandit: Bandit, theta: np.ndarray) -> float:
    """E_s E_{a ~ pi_theta} r*(s, a), contexts uniform."""
    return float((np.exp(policy_logits(bandit, theta)) * bandit.rewards()).sum(1).mean())


def kl_to_ref(bandit: Bandit, theta: np.ndarray) -> float:
    """E_s KL(pi_theta(.|s) || pi_ref(.|s))."""
    logp = policy_logits(bandit, theta)
    logref = policy_logits(bandit, np.zeros(bandit.dim))
    return float((np.exp(logp) * (logp - logref)).sum(1).mean())


def value(bandit: Bandit, theta: np.ndarray) -> float:
    """The KL-regularised value J = E r* - beta KL(pi_theta || pi_ref), maximal at theta*."""
    return expected_reward(bandit, theta) - bandit.beta * kl_to_ref(bandit, theta)


def frontier_reward(bandit: Bandit, kl: float, *, iters: int = 60) -> float:
    """The best expected reward at average KL ``kl``: pi_{c theta*}, c found by bisection."""
    lo, hi = 0.0, 1.0
    while kl_to_ref(bandit, hi * bandit.theta_star) < kl and hi < 1e6:
        hi *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl_to_ref(bandit, mid * bandit.theta_star) < kl else (lo, mid)
    return expected_reward(bandit, (lo + hi) / 2 * bandit.theta_star)


def param_error(bandit: Bandit, theta: np.ndarray) -> float:
    """|theta - theta*|."""
    return float(np.linalg.norm(theta - bandit.theta_star))
