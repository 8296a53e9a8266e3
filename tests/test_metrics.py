"""noisefit_lib.metrics against hand-computed values and scikit-learn."""

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from noisefit_lib import metrics


def test_ece_by_hand():
    # Two bins of B=2: (0, 0.5] holds 0.2, 0.4 (acc 0.5, conf 0.3); (0.5, 1] holds 0.9, 0.9
    # (acc 1, conf 0.9). ECE = 0.5 * 0.2 + 0.5 * 0.1 = 0.15.
    ece = metrics.expected_calibration_error([0.2, 0.4, 0.9, 0.9], [1, 0, 1, 1], n_bins=2)
    assert ece == pytest.approx(0.15)


def test_ece_zero_when_calibrated_and_bin_edges():
    conf = np.array([0.5, 0.5, 1.0, 1.0])
    assert metrics.expected_calibration_error(conf, [1, 0, 1, 1], n_bins=10) == pytest.approx(0)
    # 0.5 belongs to the bin (0.4, 0.5], not (0.5, 0.6]: exact edges go to the lower bin.
    assert metrics.expected_calibration_error([0.5, 0.0], [1, 0], n_bins=2) == pytest.approx(0.25)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([0.5, 0.5], [1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding creates many ties
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_auroc_by_hand_and_torch_input():
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert metrics.auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.auroc([0.1, 0.2], [1, 1])


def test_selective_accuracy():
    assert metrics.selective_accuracy([1, 0, 1, 1], [1, 1, 0, 0]) == (0.5, 0.5)
    accuracy, coverage = metrics.selective_accuracy([1, 0], [0, 0])
    assert math.isnan(accuracy) and coverage == 0.0


def test_admitted_set_accuracy_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    admitted = [1, 1, 1, 0, 1, 1]
    out = metrics.admitted_set_accuracy(y_true, y_pred, admitted, n_classes=3)
    assert out["n_admitted"] == 5 and out["coverage"] == pytest.approx(5 / 6)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["class_n"] == [2, 1, 2] and out["class_acc"] == pytest.approx([0.5, 1.0, 0.5])
    assert out["pred_n"] == [2, 2, 1] and out["pred_acc"] == pytest.approx([0.5, 0.5, 1.0])
    assert out["min_conditional_acc"] == pytest.approx(0.5)


def test_admitted_set_accuracy_empty_groups_are_nan():
    out = metrics.admitted_set_accuracy([0, 1], [0, 0], [1, 0], n_classes=2)
    assert math.isnan(out["class_acc"][1]) and math.isnan(out["pred_acc"][1])
    assert out["min_conditional_acc"] == 1.0
    nothing = metrics.admitted_set_accuracy([0, 1], [0, 0], [0, 0], n_classes=2)
    assert math.isnan(nothing["accuracy"]) and math.isnan(nothing["min_conditional_acc"])


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 1), (5, 2, 2), (6, 1, 3), (4, 0, 2), (4, 4, 1)])
def test_pass_at_k_equals_enumeration(n, c, k):
    # Enumerate every k-subset of n samples (the first c correct): the fraction with a success.
    subsets = list(combinations(range(n), k))
    expected = sum(any(i < c for i in s) for s in subsets) / len(subsets)
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_special_cases():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the success rate
    assert metrics.pass_at_k(10, 8, 3) == 1.0  # fewer than k failures: always a success
    assert metrics.pass_at_k(200, 1, 200) == 1.0
    assert metrics.pass_at_k(1000, 10, 100) == pytest.approx(
        1 - math.comb(990, 100) / math.comb(1000, 100)
    )
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 1, 5)


def test_mean_pass_at_k():
    assert metrics.mean_pass_at_k([0, 4, 2], n=4, k=1) == pytest.approx(0.5)


def test_aps_sets_cover_the_true_label_at_the_target_rate():
    rng = np.random.default_rng(0)
    logits = 2 * rng.standard_normal((6000, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])  # the model is calibrated
    cal, test = slice(0, 3000), slice(3000, None)
    pen = metrics.raps_penalties(4)
    tau = metrics.raps_threshold(
        metrics.raps_scores(probs[cal], labels[cal], rng.random(3000), pen), 0.1
    )
    sets = metrics.raps_sets(probs[test], tau, rng.random(3000), pen)
    covered = sets[np.arange(3000), labels[test]].mean()
    assert 0.88 <= covered <= 0.92  # 1 - alpha, up to sampling error (sd 0.0055)
    assert sets.sum(1).min() >= 1  # no empty sets unless allowed


def test_raps_k_reg_and_penalties():
    probs = np.array([[0.7, 0.2, 0.1]] * 10)
    labels = np.array([0] * 8 + [1, 2])  # ranks 0 x8, 1, 2
    assert metrics.raps_k_reg(probs, labels, alpha=0.5) == 1
    assert metrics.raps_k_reg(probs, labels, alpha=0.05) == 3
    assert metrics.raps_penalties(3, 1, 0.2).tolist() == [0.0, 0.2, 0.2]
    with pytest.raises(ValueError):
        metrics.raps_threshold([0.1, 0.2], 1.5)
    with pytest.raises(ValueError):
        metrics.raps_scores(np.ones(3), [0], [0.5], np.zeros(3))
