"""Evaluation metrics: calibration, ranking, detection, selective prediction, conformal sets.

Everything here works on NumPy arrays (torch tensors are converted) and returns plain floats or
dicts of floats, so results files stay JSON-serialisable. Each function is checked against a
hand-computed value or scikit-learn in ``tests/test_metrics.py``.

Explained in: notebooks/part2_softmax/13_sdm_activation.py (calibration, admitted-set accuracy,
the APS/RAPS conformal sets, checked against the official code in tests/test_raps_reference.py)
notebooks/part2_softmax/15_soft_thinking.py (pass@k) and
notebooks/part4_robustness/24_mahalanobis_scores.py (the TNR at 95 % TPR of out-of-distribution
detection, checked against the official code in tests/test_mahalanobis_reference.py); used by
notebooks/part1_noisefit/01_a_world_we_can_check.py (calibration of the base model).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _as_1d(values: Any, name: str, dtype: type = float) -> np.ndarray:
    """``values`` as a 1-D NumPy array of ``dtype`` (torch tensors are detached and copied)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over the bins ``(b/B, (b+1)/B]`` (the first bin
    also holds confidence 0), where ``acc_b`` and ``conf_b`` are the accuracy and the mean
    confidence of the ``n_b`` points in bin ``b``.

    Args:
        confidence: the probability each prediction is right, shape (N,), values in [0, 1].
        correct: whether each prediction was right, shape (N,), bool or 0/1.
        n_bins: number of equal-width bins B.

    Returns:
        The ECE, in [0, 1].
    """
    conf = _as_1d(confidence, "confidence")
    hit = _as_1d(correct, "correct", dtype=bool)
    if conf.shape != hit.shape or conf.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {conf.shape} and {hit.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidence values must lie in [0, 1]")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # (b/B, (b+1)/B]
    ece = 0.0
    for b in np.unique(bins):
        members = bins == b
        ece += members.mean() * abs(hit[members].mean() - conf[members].mean())
    return float(ece)


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: the probability a positive outscores a negative (ties: 1/2).

    Computed from average ranks (the Mann-Whitney U statistic), so it equals
    ``sklearn.metrics.roc_auc_score`` including ties.

    Args:
        scores: higher means "more likely positive", shape (N,).
        labels: 1 for positives, 0 for negatives, shape (N,); both classes must occur.
    """
    s = _as_1d(scores, "scores")
    y = _as_1d(labels, "labels", dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs at least one positive and one negative")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    start = 0
    while start < s.size:  # average the ranks of tied scores
        stop = start
        while stop + 1 < s.size and sorted_s[stop + 1] == sorted_s[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def tnr_at_tpr(in_scores: Any, out_scores: Any, tpr: float = 0.95) -> float:
    """True negative rate at the threshold whose true positive rate is closest to ``tpr``.

    The out-of-distribution literature's "TNR at 95 % TPR". Positives are the in-distribution
    points (``in_scores``; higher means "more in"), negatives the outliers. The threshold sweeps
    the sorted scores from below, removing one point at a time (on ties an in-distribution point
    first), and the first position whose TPR is nearest ``tpr`` is taken: the convention of
    ``calculate_log.get_curve`` in the official Mahalanobis
    code (Lee et al., 2018).
    """
    known, novel = _as_1d(in_scores, "in_scores"), _as_1d(out_scores, "out_scores")
    if known.size == 0 or novel.size == 0:
        raise ValueError("tnr_at_tpr needs at least one in- and one out-of-distribution score")
    if not 0.0 < tpr < 1.0:
        raise ValueError(f"tpr must be in (0, 1), got {tpr}")
    scores = np.concatenate([known, novel])
    is_novel = np.concatenate([np.zeros(known.size, bool), np.ones(novel.size, bool)])
    order = np.lexsort((is_novel, scores))  # ascending score; on ties known before novel
    removed_novel = np.concatenate([[0], np.cumsum(is_novel[order])])
    removed_known = np.arange(scores.size + 1) - removed_novel
    true_pos = known.size - removed_known
    position = int(np.abs(true_pos / known.size - tpr).argmin())
    return float(1.0 - (novel.size - removed_novel[position]) / novel.size)


def selective_accuracy(correct: Any, admitted: Any) -> tuple[float, float]:
    """Accuracy on the admitted (non-rejected) points and the coverage (fraction admitted).

    Args:
        correct: whether each prediction was right, shape (N,).
        admitted: whether each point was admitted, shape (N,).

    Returns:
        ``(accuracy, coverage)``; the accuracy is NaN when nothing is admitted.
    """
    hit = _as_1d(correct, "correct", dtype=bool)
    keep = _as_1d(admitted, "admitted", dtype=bool)
    if hit.shape != keep.shape or hit.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {hit.shape} and {keep.shape}")
    coverage = float(keep.mean())
    accuracy = float(hit[keep].mean()) if keep.any() else math.nan
    return accuracy, coverage


def admitted_set_accuracy(
    y_true: Any, y_pred: Any, admitted: Any, n_classes: int
) -> dict[str, Any]:
    """Class- and prediction-conditional accuracy of the admitted set, as in SDM's Table 1.

    For each class ``c``: the accuracy among admitted points whose *true* label is ``c``
    (class-conditional) and among admitted points *predicted* as ``c`` (prediction-conditional),
    each with its count; plus the marginal accuracy and the coverage.

    Args:
        y_true: true labels, shape (N,), integers in [0, n_classes).
        y_pred: predicted labels, shape (N,).
        admitted: whether each point was admitted, shape (N,).
        n_classes: number of classes C.

    Returns:
        ``{"accuracy", "coverage", "n_admitted", "class_acc" (C,), "class_n" (C,),
        "pred_acc" (C,), "pred_n" (C,), "min_conditional_acc"}``. Accuracies of empty groups
        are NaN; ``min_conditional_acc`` is the smallest non-NaN conditional accuracy (NaN when
        nothing is admitted).
    """
    yt = _as_1d(y_true, "y_true", dtype=int)
    yp = _as_1d(y_pred, "y_pred", dtype=int)
    keep = _as_1d(admitted, "admitted", dtype=bool)
    if not yt.shape == yp.shape == keep.shape:
        raise ValueError(f"shapes differ: {yt.shape}, {yp.shape}, {keep.shape}")
    hit = yt == yp
    accuracy, coverage = selective_accuracy(hit, keep)
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "coverage": coverage,
        "n_admitted": int(keep.sum()),
    }
    for key, labels in (("class", yt), ("pred", yp)):
        groups = [keep & (labels == c) for c in range(n_classes)]
        out[f"{key}_n"] = [int(g.sum()) for g in groups]
        out[f"{key}_acc"] = [float(hit[g].mean()) if g.any() else math.nan for g in groups]
    conditional = [a for a in out["class_acc"] + out["pred_acc"] if not math.isnan(a)]
    out["min_conditional_acc"] = min(conditional) if conditional else math.nan
    return out


def _ranked(probs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class order (most probable first), sorted probabilities and their running sums."""
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with C >= 2, got shape {p.shape}")
    order = p.argsort(axis=1)[:, ::-1]  # the official tie order: argsort reversed
    ordered = np.take_along_axis(p, order, axis=1)
    return order, ordered, np.cumsum(ordered, axis=1)


def raps_penalties(n_classes: int, k_reg: int | None = None, lam: float = 0.0) -> np.ndarray:
    """RAPS's rank penalties: ``lam`` for every rank from ``k_reg`` on (0-based); APS: all 0."""
    penalties = np.zeros(n_classes)
    if k_reg is not None:
        penalties[k_reg:] += lam
    return penalties


def raps_k_reg(probs: Any, labels: Any, alpha: float) -> int:
    """RAPS's ``k_reg``: one past the ``1 - alpha`` quantile ('higher') of the true labels' rank."""
    order, _, _ = _ranked(probs)
    y = _as_1d(labels, "labels", int)
    ranks = np.argmax(order == y[:, None], axis=1)
    return int(np.quantile(ranks, 1 - alpha, method="higher")) + 1


def raps_scores(probs: Any, labels: Any, u: Any, penalties: np.ndarray) -> np.ndarray:
    """Randomised conformity score of each true label (RAPS; APS when the penalties are zero).

    The probability mass of the classes ranked above the label, plus ``u`` times its own, plus
    the penalties up to and including its rank: the smallest threshold whose randomised set
    would contain the label (Romano et al. 2020; Angelopoulos et al. 2021, official ``giq``).
    """
    order, ordered, cumsum = _ranked(probs)
    y, u = _as_1d(labels, "labels", int), _as_1d(u, "u")
    rank = np.argmax(order == y[:, None], axis=1)
    rows = np.arange(len(y))
    own = ordered[rows, rank]
    return cumsum[rows, rank] - own + u * own + np.cumsum(penalties)[rank]


def raps_threshold(scores: Any, alpha: float) -> float:
    """The official calibrated threshold: the ``1 - alpha`` quantile ('higher') of the scores."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return float(np.quantile(_as_1d(scores, "scores"), 1 - alpha, method="higher"))


def raps_sets(
    probs: Any, tau: float, u: Any, penalties: np.ndarray, allow_empty: bool = False
) -> np.ndarray:
    """Randomised RAPS (APS) prediction sets at threshold ``tau``, as a boolean mask ``(N, C)``.

    Classes enter in order of probability while the running mass plus penalties stays at most
    ``tau``, then one more; that last class is dropped when ``u >= V``, its share of the mass
    needed to reach ``tau`` (the official ``gcq``). Empty sets become the top class unless
    ``allow_empty``.
    """
    order, ordered, cumsum = _ranked(probs)
    u = _as_1d(u, "u")
    n, n_classes = ordered.shape
    pen_cum = np.cumsum(penalties)
    sizes = np.minimum(((cumsum + pen_cum) <= tau).sum(axis=1) + 1, n_classes)
    last = sizes - 1
    rows = np.arange(n)
    share = (tau - (cumsum[rows, last] - ordered[rows, last]) - pen_cum[last]) / ordered[rows, last]
    sizes = sizes - (u >= share).astype(int)
    if tau == 1.0:
        sizes[:] = n_classes
    if not allow_empty:
        sizes[sizes == 0] = 1
    mask = np.zeros((n, n_classes), dtype=bool)
    members = np.arange(n_classes)[None, :] < sizes[:, None]
    np.put_along_axis(mask, order, members, axis=1)
    return mask


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct.

    ``pass@k = 1 - C(n - c, k) / C(n, k)``: the probability that ``k`` samples drawn without
    replacement from the ``n`` contain at least one correct one. Computed as a product, which
    is stable for large ``n``.

    Args:
        n: samples drawn per problem.
        c: how many of them were correct, ``0 <= c <= n``.
        k: the budget, ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(n_correct: Any, n: int, k: int) -> float:
    """:func:`pass_at_k` averaged over problems, given each problem's count of correct samples."""
    counts = _as_1d(n_correct, "n_correct", dtype=int)
    if counts.size == 0:
        raise ValueError("need at least one problem")
    return float(np.mean([pass_at_k(n, int(c), k) for c in counts]))
