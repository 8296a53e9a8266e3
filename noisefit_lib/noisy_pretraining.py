"""Part III's workbench for label noise in *pre-training*: glyphs, a small CNN and NMTune's parts.

* :func:`glyph_templates`, :func:`render_glyphs` and :func:`glyph_set`: procedural stroke glyphs
  (each class a random polyline, each image a jittered, blurred, noisy rendering of it) at
  16x16, the pre-training data and, with fresh templates, the in-domain downstream task;
* :func:`digits_16`: scikit-learn's bundled 8x8 digits resized to 16x16, the out-of-domain task;
* :func:`few_shot`: a seeded k-shot training split per class, the rest for testing;
* :class:`FeatureCNN` and :func:`pretrain`: a small CNN whose penultimate layer is the feature
  extractor, trained with Adam on (noisy) labels;
* :func:`feature_spectrum`, :func:`singular_value_entropy`, :func:`largest_singular_value_ratio`:
  the paper's feature-space diagnostics, with the official preprocessing;
* :class:`ResidualMLP` and :func:`nmtune_loss`: NMTune's tuner and loss, as in the official code.

Explained in: notebooks/part3_noisy_labels/18_noisy_pretraining.py (cite:
chen2024understanding). The loss and the spectrum are tested against the official code
(``Hhhhhhao/Noisy-Model-Learning``) in tests/test_nmtune_reference.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 16  # glyph and resized-digit images are SIZE x SIZE


def glyph_templates(
    n_classes: int, *, rng: np.random.Generator, strokes: tuple[int, int] = (3, 5)
) -> list[np.ndarray]:
    """``n_classes`` random polylines in the unit square, each ``(segments, 2, 2)``.

    A class is a connected polyline of ``strokes[0]`` to ``strokes[1]`` segments between uniform
    points in ``[0.15, 0.85]^2``, so that classes share stroke statistics but not shapes.
    """
    if n_classes < 1 or strokes[0] < 1 or strokes[1] < strokes[0]:
        raise ValueError(f"need n_classes >= 1 and 1 <= strokes[0] <= strokes[1], got "
                         f"{n_classes}, {strokes}")  # fmt: skip
    templates = []
    for _ in range(n_classes):
        points = rng.uniform(
            0.15, 0.85, size=(int(rng.integers(strokes[0], strokes[1] + 1)) + 1, 2)
        )
        templates.append(np.stack([points[:-1], points[1:]], axis=1))
    return templates


def render_glyphs(
    templates: Sequence[np.ndarray], labels: np.ndarray, *, rng: np.random.Generator
) -> np.ndarray:
    """Images ``(N, 1, SIZE, SIZE)`` in [0, 1] of the glyphs ``labels``, each freshly jittered.

    Each image rotates (+-0.3 rad), scales (0.85-1.1) and shifts (+-0.08) its template, draws the
    strokes as a Gaussian profile of the distance to the nearest segment (width 0.035-0.06 of
    the side), adds pixel noise (sd 0.05) and clips to [0, 1].
    """
    n = len(labels)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    pixels = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / SIZE  # (P, 2) pixel centres
    angle, scale = rng.uniform(-0.3, 0.3, n), rng.uniform(0.85, 1.1, n)
    shift, width = rng.uniform(-0.08, 0.08, (n, 2)), rng.uniform(0.035, 0.06, n)
    images = np.empty((n, SIZE * SIZE))
    for i, label in enumerate(labels):
        c, s = math.cos(angle[i]), math.sin(angle[i])
        rotation = scale[i] * np.array([[c, -s], [s, c]])
        segments = (templates[label] - 0.5) @ rotation.T + 0.5 + shift[i]
        start, direction = segments[:, 0], segments[:, 1] - segments[:, 0]  # (S, 2)
        along = ((pixels[:, None] - start) * direction).sum(-1) / (direction**2).sum(-1)
        nearest = start + along.clip(0, 1)[..., None] * direction  # (P, S, 2)
        distance = np.sqrt(((pixels[:, None] - nearest) ** 2).sum(-1)).min(1)
        images[i] = np.exp(-(distance**2) / (2 * width[i] ** 2))
    images += rng.normal(0, 0.05, images.shape)
    return images.clip(0, 1).astype(np.float32).reshape(n, 1, SIZE, SIZE)


def glyph_set(
    templates: Sequence[np.ndarray], per_class: int, *, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` shuffled renderings of every template: images and labels as tensors."""
    labels = np.repeat(np.arange(len(templates)), per_class)
    rng.shuffle(labels)
    return torch.from_numpy(render_glyphs(templates, labels, rng=rng)), torch.from_numpy(labels)


def digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits (offline), scaled to [0, 1] and resized bilinearly to 16x16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return images, torch.tensor(digits.target)


def few_shot(
    labels: torch.Tensor, shots: int, *, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of ``shots`` random training examples per class, and of all the others (test)."""
    order = torch.from_numpy(rng.permutation(len(labels)))
    train = []
    for label in torch.unique(labels):
        members = order[labels[order] == label]
        if len(members) <= shots:
            raise ValueError(f"class {int(label)} has {len(members)} examples, need > {shots}")
        train.append(members[:shots])
    train_index = torch.cat(train)
    test = torch.ones(len(labels), dtype=torch.bool)
    test[train_index] = False
    return train_index, order[test[order]]


class FeatureCNN(torch.nn.Module):
    """conv(32) - pool - conv(64) - pool - linear(``dim``) - ReLU: features; then a linear head."""

    def __init__(self, num_classes: int, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * width * (SIZE // 4) ** 2, dim),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(N, dim)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.body(x))


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained CNN and how far it fitted its (noisy) training labels."""

    model: FeatureCNN
    train_acc_given: float  # agreement with the labels it was trained on
    memorised: float  # share of the corrupted examples predicted as their wrong label (nan: none)


def pretrain(
    images: torch.Tensor,
    labels: torch.Tensor,
    clean_labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    generator: torch.Generator,
    dim: int = 64,
    width: int = 32,
    lr: float = 1e-3,
    batch_size: int = 128,
) -> Pretrained:
    """Train a :class:`FeatureCNN` with Adam on ``labels``; report its fit to them.

    The initialisation and the batch order come from ``generator`` (the global seed is left
    alone); ``clean_labels`` only serve the memorisation share.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        model = FeatureCNN(num_classes, dim, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(1024)])
    corrupted = labels != clean_labels
    # the mean over no corrupted examples is nan, which is what a clean run should report
    memorised = (predicted[corrupted] == labels[corrupted]).float().mean()
    return Pretrained(model, float((predicted == labels).float().mean()), float(memorised))


def feature_spectrum(features: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of features ``(M, D)``, preprocessed as officially.

    The official ``eval_single_dataset`` (``src/models/svd.py``) L2-normalises each row, then
    subtracts each row's mean over its ``D`` coordinates (not the column mean), and takes all
    ``D`` singular values with scikit-learn's ``TruncatedSVD``, which does not centre.
    """
    if features.ndim != 2 or min(features.shape) < 1:
        raise ValueError(f"features must be a non-empty (M, D) matrix, got {tuple(features.shape)}")
    rows = F.normalize(features.double(), dim=1)
    return torch.linalg.svdvals(rows - rows.mean(dim=1, keepdim=True))


def singular_value_entropy(singular_values: torch.Tensor) -> float:
    """SVE = -sum_i s_i log s_i, s_i = sigma_i / sum_j sigma_j (nats): the spectrum's spread."""
    share = singular_values / singular_values.sum()
    share = share[share > 0]
    return float(-(share * share.log()).sum())


def largest_singular_value_ratio(singular_values: torch.Tensor) -> float:
    """LSVR = -log(sigma_1 / sum_j sigma_j): large when the top direction holds little of it."""
    return float(-torch.log(singular_values.max() / singular_values.sum()))


class ResidualMLP(torch.nn.Module):
    """NMTune's tuner on frozen features ``f``: ``z = scale * MLP(f) + f``, then a linear head.

    As the official ``ImageEncoderMLP`` with ``--mlp-with-res True``: one hidden layer of
    ``ratio * dim`` units with BatchNorm and ReLU, a per-coordinate ``scale`` initialised to
    ``scale_init`` (the README's 1.0), and the classification head on ``z``.
    """

    def __init__(self, dim: int, num_classes: int, ratio: int = 4, scale_init: float = 1.0) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, ratio * dim),
            torch.nn.BatchNorm1d(ratio * dim),
            torch.nn.ReLU(),
            torch.nn.Linear(ratio * dim, dim),
        )
        self.scale = torch.nn.Parameter(torch.full((1, dim), scale_init))
        self.head = torch.nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logits)`` for features ``(N, dim)``."""
        tuned = self.scale * self.mlp(features) + features
        return tuned, self.head(tuned)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n, m = matrix.shape
    if n != m:
        raise ValueError(f"need a square matrix, got {tuple(matrix.shape)}")
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def nmtune_loss(
    frozen_weak: torch.Tensor,
    tuned: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    mse_weight: float = 1.0,
    cov_weight: float = 0.04,
    svd_weight: float = 0.001,
    top_k: int = 5,
) -> dict[str, torch.Tensor]:
    """NMTune's loss, as the official ``nml_tune`` computes it; returns every term and ``loss``.

    ``tuned`` and ``logits`` stack the weak view's rows over the strong view's (``2B`` rows);
    ``frozen_weak`` holds the frozen features of the weak view (``B`` rows), ``labels`` the
    ``B`` labels. Without augmentation (the README's ``--use-weak-strong False``) both views are
    the same batch. The terms: cross-entropy over both views; the mean squared error between
    the row-normalised strong-view tuned features and the detached, row-normalised frozen ones;
    the mean of the ``top_k`` largest singular values of ``tuned`` as shares of their sum
    (subtracted: the loss *rewards* a dominant top of the spectrum); and the squared
    off-diagonal covariances of ``tuned`` (unbiased, centred over the ``2B`` rows), summed and
    divided by the dimension.
    """
    if tuned.shape[0] != 2 * frozen_weak.shape[0] or tuned.shape[1] != frozen_weak.shape[1]:
        raise ValueError(
            f"tuned must be (2B, D) over frozen_weak (B, D); got {tuple(tuned.shape)} and "
            f"{tuple(frozen_weak.shape)}"
        )
    ce = F.cross_entropy(logits, torch.cat([labels, labels]))
    _, tuned_strong = tuned.chunk(2)
    mse = F.mse_loss(F.normalize(tuned_strong, dim=1), F.normalize(frozen_weak.detach(), dim=1))
    share = torch.linalg.svdvals(tuned)
    svd = (share / share.sum())[:top_k].mean()
    centred = tuned - tuned.mean(dim=0)
    covariance = centred.T @ centred / (tuned.shape[0] - 1)
    cov = off_diagonal(covariance).pow(2).sum() / tuned.shape[1]
    loss = ce + mse_weight * mse - svd_weight * svd + cov_weight * cov
    return {"loss": loss, "ce": ce, "mse": mse, "svd": svd, "cov": cov}
