"""Part IV's robustness workbench: digits in and out of distribution, a small CNN, attacks.

* :func:`digit_images`: all ten digits as images (N, 1, 8, 8), the stratified split of
  :func:`noisefit_lib.noisy_labels.load_digits_split` reshaped;
* :func:`ood_digits`: scikit-learn's bundled 8x8 digits as images (N, 1, 8, 8) in [0, 1], with
  a seeded stratified train/validation/test split of the *in-distribution* classes and the
  digits of the held-out classes (near out-of-distribution) split into validation and test;
* :func:`far_ood`: out-of-distribution images with other low-level statistics, made from a
  reference batch (``inverted``, ``permuted``) or from noise (``uniform``, ``blobs``);
* :class:`SmallCNN`: conv-conv-pool-fc-fc, initialised from an explicit generator, whose
  :meth:`SmallCNN.feature_list` returns the logits and every block's spatially averaged output;
  :func:`train_classifier` fits it with Adam on seeded minibatches;
* :func:`fgsm` and :func:`pgd`: L-infinity attacks on any differentiable classifier;
* the Mahalanobis detector of Lee et al. (2018): :func:`fit_class_gaussians` (class means and
  one shared covariance), :func:`gaussian_scores` and :func:`mahalanobis_score`, and
  :func:`preprocess` (the signed-gradient input step that moves a point towards its closest
  class); :func:`lid_scores`, the local intrinsic dimensionality baseline of adversarial
  detection (Ma et al., 2018).

The Mahalanobis functions follow ``lib_generation.py`` of ``pokaxpoka/deep_Mahalanobis_detector``
(tested against its outputs in ``tests/test_mahalanobis_reference.py``); the mixture and its loss
follow ``Bai-YT/AdaptiveSmoothing`` (``tests/test_adaptive_smoothing_reference.py``).

Explained in: notebooks/part4_robustness/24_mahalanobis_scores.py (cite: lee2018simple) and
notebooks/part4_robustness/25_adaptive_smoothing.py (cite: bai2023improving).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from noisefit_lib.noisy_labels import DigitsSplit, load_digits_split

IN_CLASSES = (0, 1, 2, 3, 4, 5)
FAR_OOD_KINDS = ("inverted", "permuted", "uniform", "blobs")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OODDigits:
    """In-distribution images (N, 1, 8, 8) and labels in three splits, and held-out-class images.

    Labels are re-indexed to ``0 .. len(in_classes) - 1`` in the order of ``in_classes``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    held_out_val: torch.Tensor
    held_out_test: torch.Tensor
    in_classes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """The number of in-distribution classes."""
        return len(self.in_classes)


def digit_images(*, rng: np.random.Generator) -> DigitsSplit:
    """:func:`~noisefit_lib.noisy_labels.load_digits_split` with images (N, 1, 8, 8)."""
    split = load_digits_split(rng=rng)
    return DigitsSplit(
        x_train=split.x_train.reshape(-1, 1, 8, 8),
        y_train=split.y_train,
        x_val=split.x_val.reshape(-1, 1, 8, 8),
        y_val=split.y_val,
        x_test=split.x_test.reshape(-1, 1, 8, 8),
        y_test=split.y_test,
    )


def ood_digits(
    *,
    rng: np.random.Generator,
    in_classes: Sequence[int] = IN_CLASSES,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> OODDigits:
    """Digits of ``in_classes`` split by class, and the other digits split in half.

    Args:
        rng: draws the split's random state.
        in_classes: the in-distribution digits (at least two, each in 0-9, no repeats).
        val_fraction: share of the in-distribution digits in the validation split.
        test_fraction: share of the in-distribution digits in the test split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    in_classes = tuple(int(c) for c in in_classes)
    if len(set(in_classes)) != len(in_classes) or not 2 <= len(in_classes) <= 9:
        raise ValueError(f"need 2-9 distinct in-distribution classes, got {in_classes}")
    if not set(in_classes) <= set(range(10)):
        raise ValueError(f"digit classes are 0-9, got {in_classes}")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < fractions, sum < 1; got {val_fraction}, {test_fraction}")
    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    inside = np.isin(y, in_classes)
    relabel = {c: i for i, c in enumerate(in_classes)}
    x_in, y_in = x[inside], np.array([relabel[c] for c in y[inside]], dtype=np.int64)
    state = int(rng.integers(2**31 - 1))
    x_rest, x_test, y_rest, y_test = train_test_split(
        x_in, y_in, test_size=test_fraction, stratify=y_in, random_state=state
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_fraction / (1 - test_fraction),
        stratify=y_rest,
        random_state=state + 1,
    )
    x_out = x[~inside][rng.permutation(int((~inside).sum()))]
    half = len(x_out) // 2
    tensors = [torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val, x_test, y_test)]
    return OODDigits(
        *tensors, torch.from_numpy(x_out[:half]), torch.from_numpy(x_out[half:]), in_classes
    )


def far_ood(kind: str, like: torch.Tensor, *, rng: np.random.Generator) -> torch.Tensor:
    """Out-of-distribution images shaped like ``like`` (N, 1, H, W) in [0, 1].

    ``inverted``: ``1 - x``; ``permuted``: each image's pixels in a random order (its histogram
    kept); ``uniform``: independent U(0, 1) pixels; ``blobs``: smoothed Gaussian noise, shifted
    and scaled to the mean and standard deviation of ``like``'s pixels, then clipped to [0, 1].
    """
    if kind not in FAR_OOD_KINDS:
        raise ValueError(f"unknown far-OOD kind {kind!r}; valid: {FAR_OOD_KINDS}")
    if like.ndim != 4:
        raise ValueError(f"need images (N, C, H, W), got shape {tuple(like.shape)}")
    if kind == "inverted":
        return 1.0 - like
    if kind == "permuted":
        flat = like.reshape(len(like), -1).numpy()
        order = np.argsort(rng.random(flat.shape), axis=1)
        return torch.from_numpy(np.take_along_axis(flat, order, axis=1)).reshape(like.shape)
    if kind == "uniform":
        return torch.from_numpy(rng.random(like.shape, dtype=np.float32))
    noise = torch.from_numpy(rng.standard_normal(like.shape, dtype=np.float32))
    grid = torch.arange(-2, 3, dtype=torch.float32)
    kernel_1d = torch.exp(-(grid**2) / 2)
    kernel = (kernel_1d[:, None] * kernel_1d[None, :] / kernel_1d.sum() ** 2)[None, None]
    smooth = F.conv2d(noise.reshape(-1, 1, *like.shape[2:]), kernel, padding=2)
    smooth = (smooth - smooth.mean()) / smooth.std()
    return (smooth * like.std() + like.mean()).clamp(0, 1).reshape(like.shape)


class SmallCNN(torch.nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> maxpool 2 -> fc -> ReLU -> fc, for 1x8x8 images.

    Weights and biases are uniform in ``+-1/sqrt(fan_in)``, drawn from ``generator``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        generator: torch.Generator,
        widths: tuple[int, int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, widths[0], 3, padding=1)
        self.conv2 = torch.nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.fc1 = torch.nn.Linear(widths[1] * 16, hidden)
        self.fc2 = torch.nn.Linear(hidden, num_classes)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
                bound = layer.weight[0].numel() ** -0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    @property
    def feature_sizes(self) -> list[int]:
        """The width of each feature in :meth:`feature_list`."""
        return [self.conv1.out_channels, self.conv2.out_channels, self.fc1.out_features]

    def feature_list(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, classes) and each block's output, conv maps averaged over space (N, D)."""
        h1 = F.relu(self.conv1(x))
        h2 = F.relu(self.conv2(h1))
        h3 = F.relu(self.fc1(F.max_pool2d(h2, 2).flatten(1)))
        return self.fc2(h3), [h1.mean((2, 3)), h2.mean((2, 3)), h3]

    def layer_features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The features of one block (0, 1 or 2), as in :meth:`feature_list`."""
        return self.feature_list(x)[1][layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes)."""
        return self.feature_list(x)[0]


def train_classifier(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
) -> list[float]:
    """Adam on cross-entropy over seeded minibatches; returns the mean loss of each epoch."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs, batch_size >= 1: {epochs, batch_size}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(x))
    model.eval()
    return losses


def _input_gradient(loss_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(x), x)
    return grad


def fgsm(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float
) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` up the cross-entropy, clipped to [0, 1]."""
    grad = _input_gradient(lambda v: F.cross_entropy(model(v), y, reduction="sum"), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float,
    generator: torch.Generator,
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in the L-infinity ball of radius ``eps``.

    Each restart starts at a uniform point of the ball; per example, the restart with the highest
    final loss is kept. Images stay in [0, 1].
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"need steps, restarts >= 1: {steps, restarts}")
    best, best_loss = x.detach().clone(), torch.full((len(x),), -torch.inf, device=x.device)
    for _ in range(restarts):
        start = torch.rand(x.shape, generator=generator).to(x.device)
        adv = (x + eps * (2 * start - 1)).clamp(0, 1)
        for _ in range(steps):
            grad = _input_gradient(lambda v: F.cross_entropy(model(v), y, reduction="sum"), adv)
            adv = adv + step_size * grad.sign()
            adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1).detach()
        with torch.no_grad():
            loss = F.cross_entropy(model(adv), y, reduction="none")
        better = loss > best_loss
        best[better], best_loss[better] = adv[better], loss[better]
    return best


@dataclass(frozen=True)
class ClassGaussians:
    """Class means (C, D) and the precision (D, D) of their one shared covariance."""

    means: torch.Tensor
    precision: torch.Tensor


def fit_class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> ClassGaussians:
    """Class means and the tied covariance's (pseudo-)inverse, in float64.

    ``Sigma = (1/N) sum_c sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T``, the maximum-likelihood
    estimate (scikit-learn's ``EmpiricalCovariance`` on class-centred features, as the official
    code fits it); the precision is its symmetric pseudo-inverse.
    """
    f = features.detach().double()
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) == 0:
        raise ValueError(f"every class needs at least one example; counts {counts.tolist()}")
    means = torch.zeros(num_classes, f.shape[1], dtype=torch.float64)
    means.index_add_(0, labels, f)
    means /= counts[:, None]
    centred = f - means[labels]
    covariance = centred.T @ centred / len(f)
    return ClassGaussians(means, torch.linalg.pinv(covariance, hermitian=True))


def gaussian_scores(features: torch.Tensor, gaussians: ClassGaussians) -> torch.Tensor:
    """``-0.5 (f - mu_c)^T Sigma^{-1} (f - mu_c)`` for every point and class, shape (N, C)."""
    diff = features.double()[:, None, :] - gaussians.means[None]
    return -0.5 * torch.einsum("ncd,de,nce->nc", diff, gaussians.precision, diff)


def mahalanobis_score(features: torch.Tensor, gaussians: ClassGaussians) -> torch.Tensor:
    """The confidence score ``M(x) = max_c gaussian_scores``, shape (N,); higher: more in."""
    return gaussian_scores(features, gaussians).max(dim=1).values


def preprocess(
    x: torch.Tensor, feature_fn: FeatureFn, gaussians: ClassGaussians, eps: float
) -> torch.Tensor:
    """The input step ``x - eps * sign(grad_x 0.5 d^2(f(x), mu_c_hat))`` towards the closest class.

    ``c_hat`` is the class of the highest Gaussian score at ``x``. As in the official code, a
    zero gradient counts as positive (the sign is ``+1`` where the gradient is ``>= 0``).
    """

    def distance(v: torch.Tensor) -> torch.Tensor:
        f = feature_fn(v).double()
        closest = gaussian_scores(f.detach(), gaussians).argmax(dim=1)
        diff = f - gaussians.means[closest]
        return 0.5 * torch.einsum("nd,de,ne->n", diff, gaussians.precision, diff).mean()

    grad = _input_gradient(distance, x)
    return (x - eps * (2 * (grad >= 0).to(x.dtype) - 1)).detach()


def lid_scores(features: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """Local intrinsic dimensionality, maximum-likelihood estimate from ``k`` nearest neighbours.

    ``LID(x) = -k / sum_{j <= k} log(r_j / r_k)`` with ``r_j`` the distance from ``x`` to its
    j-th nearest neighbour in ``reference`` after the nearest one (which is ``x`` itself when
    ``x`` is in ``reference``, the official convention). Shapes: (N, D), (M, D) -> (N,).
    """
    if not 1 <= k < len(reference):
        raise ValueError(f"need 1 <= k < len(reference) = {len(reference)}, got {k}")
    distances = torch.cdist(features.double(), reference.double())
    nearest = distances.sort(dim=1).values[:, 1 : k + 1]
    return -k / torch.log(nearest / nearest[:, -1:]).sum(dim=1)


def mixed_log_probs(
    std_logits: torch.Tensor,
    rob_logits: torch.Tensor,
    alpha: float | torch.Tensor,
    *,
    std_scale: float = 1.0,
    rob_scale: float = 1.0,
) -> torch.Tensor:
    """``log((1 - alpha) softmax(std_scale g) + alpha softmax(rob_scale h))``, shape (N, C).

    ``alpha`` is a number or a tensor of shape (N,) or (N, 1): the weight of the robust model.
    Computed as a log-sum-exp of the two log-probabilities, so that neither underflows; at
    ``alpha = 0`` (``1``) it is the standard (robust) model's log-softmax exactly.
    """
    alpha = torch.as_tensor(alpha, dtype=std_logits.dtype, device=std_logits.device)
    if alpha.ndim == 1:
        alpha = alpha[:, None]
    if bool(((alpha < 0) | (alpha > 1)).any()):
        raise ValueError("alpha must lie in [0, 1]")
    parts = torch.stack(
        [
            torch.log1p(-alpha) + F.log_softmax(std_scale * std_logits, dim=1),
            torch.log(alpha) + F.log_softmax(rob_scale * rob_logits, dim=1),
        ]
    )
    return torch.logsumexp(parts, dim=0)


def composite_loss(
    preds: torch.Tensor,
    labels: torch.Tensor,
    gammas: torch.Tensor,
    attacked: torch.Tensor,
    *,
    c_bce: float = 1.5,
    c_ce: float = 0.0,
    c_prod: float = 0.3,
) -> torch.Tensor:
    """The mixing network's loss, per example: ``c_bce B + c_ce E + c_prod B E``.

    ``B`` is the binary cross-entropy of the mixing logit ``gammas`` (N,) against ``attacked``
    (1 where the input was attacked, so the robust model should get the weight), ``E`` the
    cross-entropy of ``preds`` (N, C; the mixture's log-probabilities) against ``labels``. The
    defaults are the official CIFAR-10 configuration's constants.
    """
    bce = F.binary_cross_entropy_with_logits(gammas, attacked.to(gammas.dtype), reduction="none")
    ce = F.cross_entropy(preds, labels, reduction="none")
    return c_bce * bce + c_ce * ce + c_prod * bce * ce
