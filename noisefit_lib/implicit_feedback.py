"""A synthetic implicit-feedback world and matrix factorisation trained by BPR, BPO and NBPO.

* :func:`make_world`: users x items with a hidden true preference matrix, an exposure model that
  decides which true positives are observed (exposure bias: popular items and active users are
  seen more), and so the hidden true positives among the unobserved items; seeded by an explicit
  NumPy generator (:class:`World`);
* :func:`sample_triplets`: uniform negative sampling of unobserved items, ``n_neg`` per observed
  positive, as the official code does;
* :func:`init_params` and :func:`sgd_step`: the official update rules of BPR, BPO and NBPO
  (summed gradients over a batch, L2 weight decay, gradient *ascent*), vectorised;
* :func:`fit`: epochs of those steps with the official learning-rate decay;
* :func:`recall_ndcg`: Recall@K and NDCG@K of a score matrix against the hidden truth, training
  positives excluded from the ranking.

Explained in: notebooks/part3_noisy_labels/21_noisy_label_negative_sampling.py (NBPO; cite:
yu2020sampler), which derives the losses and checks :func:`sgd_step` against autograd;
``tests/test_nbpo_reference.py`` checks it against the official code (``Wenhui-Yu/NBPO``,
commit ``ac9b1b5``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("BPR", "BPO", "NBPO")
Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class World:
    """One synthetic implicit-feedback data set.

    Attributes:
        true_pref: (users, items) bool, the hidden true positives ``y``.
        exposure: (users, items) float, the probability that a pair is shown to the user.
        train: (users, items) bool, the observed positives ``y~ = y AND exposed``.
    """

    true_pref: np.ndarray
    exposure: np.ndarray
    train: np.ndarray

    @property
    def hidden(self) -> np.ndarray:
        """True positives that were not observed: the evaluation's relevant items."""
        return self.true_pref & ~self.train

    @property
    def hidden_fraction(self) -> float:
        """Realised share of true positives that are hidden."""
        return float(self.hidden.sum() / max(self.true_pref.sum(), 1))

    @property
    def hidden_among_unobserved(self) -> float:
        """Realised share of hidden true positives among all unobserved pairs (the label noise)."""
        return float(self.hidden.sum() / max((~self.train).sum(), 1))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The official code's sigmoid: exactly 0 below -10 and 1 above 10."""
    x = np.asarray(x, dtype=np.float64)
    out = 1.0 / (1.0 + np.exp(-np.clip(x, -10, 10)))
    return np.where(x > 10, 1.0, np.where(x < -10, 0.0, out))


def _exposure_offset(logit: np.ndarray, mask: np.ndarray, target: float) -> float:
    """The constant c with mean(sigmoid(logit + c)) over ``mask`` equal to ``target``."""
    low, high = -30.0, 30.0
    for _ in range(80):
        mid = (low + high) / 2
        mean = float(sigmoid(logit[mask] + mid).mean())
        low, high = (mid, high) if mean < target else (low, mid)
    return (low + high) / 2


def make_world(
    n_users: int,
    n_items: int,
    *,
    rng: np.random.Generator,
    rank: int = 8,
    density: float = 0.05,
    hidden: float = 0.5,
    exposure_bias: float = 1.0,
    pref_noise: float = 0.3,
) -> World:
    """Draw a world: low-rank true preferences, exposure, observed positives.

    True preference: ``y_ui = [a_u . b_i + 0.5 c_i + pref_noise * logistic > t]`` with ``t`` the
    quantile giving ``density``. Exposure: ``P(exposed) = sigmoid(k + exposure_bias * (pop_i +
    act_u) / sqrt(2))`` with standard-normal item popularity and user activity, independent of
    the preference, and ``k`` set so that a share ``hidden`` of the true positives is unexposed
    on average. Then ``P(unobserved | y = 1)`` is a rank-2 logit, which NBPO can represent.

    Args:
        n_users: Number of users.
        n_items: Number of items.
        rng: The only source of randomness.
        rank: Rank of the true preference model.
        density: Share of true positives among all pairs.
        hidden: Target share of true positives that are hidden (not exposed).
        exposure_bias: Spread of the exposure log-odds; 0 gives uniform exposure.
        pref_noise: Scale of the logistic noise on the preference scores.

    Returns:
        The :class:`World`.
    """
    a = rng.standard_normal((n_users, rank)) / np.sqrt(rank)
    b = rng.standard_normal((n_items, rank))
    score = a @ b.T + 0.5 * rng.standard_normal(n_items)[None, :]
    score = score + pref_noise * rng.logistic(size=score.shape)
    true_pref = score > np.quantile(score, 1 - density)
    pop, act = rng.standard_normal(n_items), rng.standard_normal(n_users)
    logit = exposure_bias * (pop[None, :] + act[:, None]) / np.sqrt(2)
    exposure = sigmoid(logit + _exposure_offset(logit, true_pref, 1 - hidden))
    exposed = rng.random(exposure.shape) < exposure
    return World(true_pref=true_pref, exposure=exposure, train=true_pref & exposed)


def sample_triplets(
    train: np.ndarray, n_neg: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every observed positive ``(u, i)`` repeated ``n_neg`` times, each with a uniform negative.

    A negative ``j`` is drawn uniformly from the items that are not training positives of
    ``u`` (rejection sampling, as in the official code). Positives keep the row-major order.

    Returns:
        ``(u, i, j)`` int arrays of length ``n_neg * train.sum()``.
    """
    users, items = np.nonzero(train)
    u, i = np.repeat(users, n_neg), np.repeat(items, n_neg)
    j = rng.integers(0, train.shape[1], size=u.size)
    bad = train[u, j]
    while bad.any():
        j[bad] = rng.integers(0, train.shape[1], size=int(bad.sum()))
        bad = train[u, j]
    return u, i, j


def init_params(
    method: str, n_users: int, n_items: int, k0: int, k1: int, rng: np.random.Generator
) -> Params:
    """The official initialisation of the factors.

    ``U, V ~ U(0,1)/sqrt(K0)``; ``P ~ 5 U(0,1)/sqrt(K1)``, ``Q ~ -5 U(0,1)/sqrt(K1)``: the
    negative Q makes the initial flip probabilities sigmoid(P . Q) small. P, Q only for NBPO.
    """
    params = {
        "U": rng.random((n_users, k0)) / np.sqrt(k0),
        "V": rng.random((n_items, k0)) / np.sqrt(k0),
    }
    if method == "NBPO":
        params["P"] = 5 * rng.random((n_users, k1)) / np.sqrt(k1)
        params["Q"] = -5 * rng.random((n_items, k1)) / np.sqrt(k1)
    return params


def _scatter(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``target[rows] += values`` with repeated rows summed (``np.add.at``, by bincount)."""
    for col in range(target.shape[1]):
        target[:, col] += np.bincount(rows, values[:, col], minlength=target.shape[0])


def gradients(method: str, params: Params, u: np.ndarray, i: np.ndarray, j: np.ndarray) -> Params:
    """The official ascent directions, summed over the triplets (no weight decay).

    BPR: ``log sigmoid(x_ui - x_uj)``. BPO: ``log R_ui + log(1 - R_uj)``. NBPO: the official
    surrogate ``sg(1-g) log R + sg(R) log(1-g)`` on the positive and ``log(1-R) + sg(g) log R +
    sg(R) log g`` on the negative, with ``R = sigmoid(U.V)``, ``g = sigmoid(P.Q)`` (sg: held
    constant when differentiating).
    """
    U, V = params["U"], params["V"]
    xi, xj = (U[u] * V[i]).sum(1), (U[u] * V[j]).sum(1)
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    if method == "BPR":
        c = sigmoid(-(xi - xj))[:, None]
        ci, cj = c, -c
    elif method == "BPO":
        ci, cj = sigmoid(-xi)[:, None], -sigmoid(xj)[:, None]
    elif method == "NBPO":
        P, Q = params["P"], params["Q"]
        ri, rj = sigmoid(xi), sigmoid(xj)
        gi, gj = sigmoid((P[u] * Q[i]).sum(1)), sigmoid((P[u] * Q[j]).sum(1))
        ci = ((1 - gi) * (1 - ri))[:, None]
        cj = (gj * (1 - rj) - rj)[:, None]
        pi, pj = (-gi * ri)[:, None], ((1 - gj) * rj)[:, None]
        _scatter(grads["P"], u, pi * Q[i] + pj * Q[j])
        _scatter(grads["Q"], i, pi * P[u])
        _scatter(grads["Q"], j, pj * P[u])
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    _scatter(grads["U"], u, ci * V[i] + cj * V[j])
    _scatter(grads["V"], i, ci * U[u])
    _scatter(grads["V"], j, cj * U[u])
    return grads


def sgd_step(
    method: str,
    params: Params,
    u: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    *,
    eta: float,
    lambda_r: float,
    lambda_phi: float = 5.0,
) -> Params:
    """One official batch update, in place: ``W += eta * (grad - lambda * W)``."""
    grads = gradients(method, params, u, i, j)
    for name, grad in grads.items():
        lam = lambda_phi if name in ("P", "Q") else lambda_r
        params[name] += eta * (grad - lam * params[name])
    return params


def fit(
    method: str,
    train: np.ndarray,
    *,
    rng: np.random.Generator,
    k0: int = 16,
    k1: int = 16,
    epochs: int = 50,
    eta: float = 0.05,
    lambda_r: float = 1.0,
    lambda_phi: float = 5.0,
    n_neg: int = 4,
    batch_size: int = 5000,
) -> Params:
    """Train one model: official init, ``eta *= 0.99`` at each epoch, batches of positives.

    Args:
        method: ``"BPR"``, ``"BPO"`` or ``"NBPO"``.
        train: (users, items) bool observed positives.
        rng: Draws the initialisation and the negatives.
        k0: Rank of the preference factors U, V.
        k1: Rank of the flip factors P, Q (NBPO only).
        epochs: Passes over the observed positives.
        eta: Initial learning rate.
        lambda_r: Weight decay of U, V.
        lambda_phi: Weight decay of P, Q.
        n_neg: Negatives per positive.
        batch_size: Positives per batch (each with its ``n_neg`` triplets).

    Returns:
        The parameters ``{"U", "V"[, "P", "Q"]}``.
    """
    params = init_params(method, *train.shape, k0, k1, rng)
    for _ in range(epochs):
        eta = eta * 0.99
        u, i, j = sample_triplets(train, n_neg, rng)
        step = batch_size * n_neg
        for start in range(0, u.size, step):
            part = slice(start, start + step)
            sgd_step(
                method,
                params,
                u[part],
                i[part],
                j[part],
                eta=eta,
                lambda_r=lambda_r,
                lambda_phi=lambda_phi,
            )
    return params


def recall_ndcg(
    scores: np.ndarray, train: np.ndarray, relevant: np.ndarray, k: int = 20
) -> tuple[float, float]:
    """Mean Recall@k and NDCG@k over users with at least one relevant item.

    Items that are training positives are removed from each user's ranking. Recall is hits over
    the number of relevant items; NDCG's ideal DCG counts ``min(k, relevant)`` hits, as in the
    official ``Library.evaluation_NDCG``.
    """
    masked = np.where(train, -np.inf, scores)
    top = np.argpartition(-masked, k, axis=1)[:, :k]
    order = np.take_along_axis(masked, top, 1).argsort(1)[:, ::-1]
    top = np.take_along_axis(top, order, 1)
    hits = np.take_along_axis(relevant, top, 1)
    n_rel = relevant.sum(1)
    users = n_rel > 0
    discount = 1 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    recall = hits.sum(1)[users] / n_rel[users]
    ndcg = (hits * discount).sum(1)[users] / ideal[users]
    return float(recall.mean()), float(ndcg.mean())
