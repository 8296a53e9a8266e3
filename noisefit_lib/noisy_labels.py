"""Part III's noisy-label workbench: digits with injected label noise, a small MLP, and a loop.

* :func:`load_digits_split`: scikit-learn's bundled 8x8 digits (offline) as a seeded, stratified
  train/validation/test split of float tensors;
* :func:`symmetric_noise`, :func:`asymmetric_noise`, :func:`instance_noise` (or :func:`corrupt`
  by name): label noise at a given rate from an explicit NumPy generator, returning the noisy
  labels, the mask of corrupted examples and the realised rate (:class:`NoisyLabels`);
* :func:`noisy_digits`: both at once, a :class:`NoisyDigits` task (noisy train and validation
  labels, clean test labels, and the clean train labels kept aside for the metrics);
* :func:`mlp`: a ReLU MLP initialised from an explicit torch generator;
* :func:`gce_loss` (generalised cross-entropy, a standard robust baseline) and :class:`ELRLoss`
  (early-learning regularisation, whose temporal-ensemble targets need example indices);
* :func:`train_with_indices`: minibatch SGD that hands each batch's example indices to the loss
  and records, per epoch, test accuracy and the fractions of corrupted training examples that
  the model *memorised* (predicts the wrong, given label) and *corrected* (predicts the true one).

Explained in: notebooks/part3_noisy_labels/16_early_learning_regularization.py, which derives
ELR and checks :class:`ELRLoss` against the official code (cite: liu2020early).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
NOISE_KINDS = ("symmetric", "asymmetric", "instance")
# Asymmetric noise flips a class to a similar-looking one: the MNIST map of Patrini et al.
# (2017), 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1; the other classes keep their labels.
DIGITS_FLIPS: Mapping[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}

IndexedLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DigitsSplit:
    """Digits features (N, 64) in [0, 1] (float32) and labels (N,) (int64) for three splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(
    *, rng: np.random.Generator, val_fraction: float = 0.1, test_fraction: float = 0.3
) -> DigitsSplit:
    """The 1797 digits of :func:`sklearn.datasets.load_digits`, split by class (stratified).

    Args:
        rng: draws the split's random state.
        val_fraction: share of all examples in the validation split.
        test_fraction: share of all examples in the test split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < fractions, sum < 1; got {val_fraction}, {test_fraction}")
    digits = load_digits()
    x, y = digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    state = int(rng.integers(2**31 - 1))
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=state
    )
    val_share = val_fraction / (1 - test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=state + 1
    )
    arrays = (x_train, y_train, x_val, y_val, x_test, y_test)
    return DigitsSplit(*(torch.from_numpy(a) for a in arrays))


@dataclass(frozen=True)
class NoisyLabels:
    """Noisy labels (N,), the mask of examples whose label is now wrong, and its mean."""

    labels: np.ndarray
    corrupted: np.ndarray
    realised_rate: float


def _result(clean: np.ndarray, noisy: np.ndarray) -> NoisyLabels:
    corrupted = noisy != clean
    return NoisyLabels(noisy, corrupted, float(corrupted.mean()))


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")


def symmetric_noise(
    labels: np.ndarray, rate: float, *, rng: np.random.Generator, num_classes: int = NUM_CLASSES
) -> NoisyLabels:
    """Relabel exactly ``round(rate * N)`` random examples uniformly over all classes.

    This is the official ELR code's convention: the new label may equal the old one, so the
    realised rate of wrong labels is about ``rate * (1 - 1 / num_classes)``.
    """
    _check_rate(rate)
    labels = np.asarray(labels, dtype=np.int64)
    chosen = rng.permutation(len(labels))[: round(rate * len(labels))]
    noisy = labels.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return _result(labels, noisy)


def asymmetric_noise(
    labels: np.ndarray,
    rate: float,
    *,
    rng: np.random.Generator,
    flips: Mapping[int, int] = DIGITS_FLIPS,
) -> NoisyLabels:
    """Flip ``round(rate * n_c)`` random examples of each source class ``c`` to ``flips[c]``.

    Classes outside ``flips`` keep their labels, so the realised rate over all examples is about
    ``rate`` times the share of the source classes (half of the digits for :data:`DIGITS_FLIPS`).
    """
    _check_rate(rate)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    for source in sorted(flips):
        members = np.flatnonzero(labels == source)
        chosen = rng.permutation(members)[: round(rate * len(members))]
        noisy[chosen] = flips[source]
    return _result(labels, noisy)


def instance_noise(
    features: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    rng: np.random.Generator,
    num_classes: int = NUM_CLASSES,
) -> NoisyLabels:
    """Flip ``round(rate * N)`` examples, the ambiguous ones more often, to their nearest class.

    Each example's ambiguity is ``d(own centroid) - d(nearest other centroid)`` (Euclidean, in
    feature space); examples are drawn without replacement with probability proportional to
    ``exp(ambiguity / std)`` and relabelled as the nearest other class, so the noise depends on
    the input, as a tired annotator's would.
    """
    _check_rate(rate)
    x, labels = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])
    dist = np.linalg.norm(x[:, None, :] - centroids[None], axis=2)  # (N, C)
    own = dist[np.arange(len(x)), labels]
    dist[np.arange(len(x)), labels] = np.inf
    nearest = dist.argmin(axis=1)
    ambiguity = own - dist.min(axis=1)
    weight = np.exp((ambiguity - ambiguity.max()) / (ambiguity.std() + 1e-12))
    chosen = rng.choice(len(x), size=round(rate * len(x)), replace=False, p=weight / weight.sum())
    noisy = labels.copy()
    noisy[chosen] = nearest[chosen]
    return _result(labels, noisy)


def corrupt(
    kind: str, features: np.ndarray, labels: np.ndarray, rate: float, *, rng: np.random.Generator
) -> NoisyLabels:
    """Label noise by name: ``symmetric``, ``asymmetric`` (:data:`DIGITS_FLIPS`) or ``instance``."""
    if kind == "symmetric":
        return symmetric_noise(labels, rate, rng=rng)
    if kind == "asymmetric":
        return asymmetric_noise(labels, rate, rng=rng)
    if kind == "instance":
        return instance_noise(features, labels, rate, rng=rng)
    raise ValueError(f"unknown noise kind {kind!r}; choose one of: {', '.join(NOISE_KINDS)}")


@dataclass(frozen=True)
class NoisyDigits:
    """A noisy-label task: train and validation labels noisy, test labels clean.

    ``y_train_clean`` and ``corrupted`` are for the metrics only, never for training.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: torch.Tensor
    corrupted: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    realised_rate: float


def noisy_digits(kind: str, rate: float, *, rng: np.random.Generator) -> NoisyDigits:
    """:func:`load_digits_split`, then :func:`corrupt` its train and validation labels.

    The split is drawn first from ``rng``, so two rates from equally seeded generators share it.
    """
    split = load_digits_split(rng=rng)
    train = corrupt(kind, split.x_train.numpy(), split.y_train.numpy(), rate, rng=rng)
    val = corrupt(kind, split.x_val.numpy(), split.y_val.numpy(), rate, rng=rng)
    return NoisyDigits(
        x_train=split.x_train,
        y_train=torch.from_numpy(train.labels),
        y_train_clean=split.y_train,
        corrupted=torch.from_numpy(train.corrupted),
        x_val=split.x_val,
        y_val=torch.from_numpy(val.labels),
        x_test=split.x_test,
        y_test=split.y_test,
        realised_rate=train.realised_rate,
    )


def mlp(
    hidden: Sequence[int],
    *,
    generator: torch.Generator,
    in_features: int = 64,
    num_classes: int = NUM_CLASSES,
) -> torch.nn.Sequential:
    """A ReLU MLP ``in_features -> hidden[0] -> ... -> num_classes``, initialised from a generator.

    Weights and biases are uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default range), drawn from
    ``generator`` so that the initialisation does not depend on the global seed.
    """
    layers: list[torch.nn.Module] = []
    sizes = [in_features, *hidden]
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(sizes[-1], num_classes))
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                bound = layer.in_features**-0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return torch.nn.Sequential(*layers)


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy of Zhang & Sabuncu (2018): mean of ``(1 - p_y^q) / q``.

    ``q -> 0`` recovers cross-entropy and ``q = 1`` the (noise-robust) mean absolute error.
    """
    p_y = F.softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return ((1 - p_y.clamp_min(1e-7) ** q) / q).mean()


class ELRLoss:
    """Cross-entropy plus early-learning regularisation (ELR; cite: liu2020early).

    Holds one target ``t_i`` per training example (shape (N, C), zeros at first). A call on a
    batch's logits (B, C), labels (B,) and example indices (B,) first updates the targets,
    ``t_i <- beta t_i + (1 - beta) p_i / sum_c p_ic`` with ``p_i`` the clamped, detached
    softmax, then returns ``CE + lam * mean_i log(1 - <p_i, t_i>)``, as the official
    ``ELR/model/loss.py`` does. The indices in a batch must be distinct.
    """

    def __init__(
        self,
        num_examples: int,
        num_classes: int = NUM_CLASSES,
        *,
        beta: float = 0.7,
        lam: float = 3.0,
        clamp: float = 1e-4,
    ) -> None:
        self.target = torch.zeros(num_examples, num_classes)
        self.beta, self.lam, self.clamp = beta, lam, clamp

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Update the targets of ``index`` (B,), then return the batch's loss (a scalar)."""
        p = F.softmax(logits, dim=1).clamp(self.clamp, 1 - self.clamp)  # (B, C)
        p_detached = p.detach()
        self.target = self.target.to(logits.device)
        self.target[index] = self.beta * self.target[index] + (1 - self.beta) * (
            p_detached / p_detached.sum(dim=1, keepdim=True)
        )
        regulariser = torch.log(1 - (self.target[index] * p).sum(dim=1)).mean()
        return F.cross_entropy(logits, labels) + self.lam * regulariser


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: NoisyDigits) -> dict[str, float]:
    """The metrics of one model on a task, each a fraction in [0, 1].

    ``test_acc`` (clean test labels), ``val_acc`` (noisy validation labels, what a user could
    select on), ``train_fit`` (agreement with the noisy training labels), and on the corrupted
    training examples ``memorised`` (prediction = the given, wrong label) and ``corrected``
    (prediction = the true label).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pred_train = model(task.x_train.to(device)).argmax(dim=1).cpu()
    wrong = task.corrupted
    row = {
        "test_acc": (model(task.x_test.to(device)).argmax(1).cpu() == task.y_test).double(),
        "val_acc": (model(task.x_val.to(device)).argmax(1).cpu() == task.y_val).double(),
        "train_fit": (pred_train == task.y_train).double(),
        "memorised": (pred_train[wrong] == task.y_train[wrong]).double(),
        "corrected": (pred_train[wrong] == task.y_train_clean[wrong]).double(),
    }
    model.train(was_training)
    return {k: float(v.mean()) if v.numel() else float("nan") for k, v in row.items()}


def train_with_indices(
    model: torch.nn.Module,
    loss_fn: IndexedLoss,
    optimizer: torch.optim.Optimizer,
    task: NoisyDigits,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    eval_every: int = 1,
) -> list[dict[str, float]]:
    """Minibatch training on the noisy labels, handing each batch's example indices to the loss.

    Each epoch visits the training set once in an order drawn from ``generator``; each batch
    calls ``loss_fn(logits, noisy_labels, index)`` with ``index`` (B,) the examples' positions
    in ``task.x_train``. A history row (``epoch``, mean training ``loss`` over the epoch, NaN at
    epoch 0, and :func:`evaluate`'s metrics) is recorded at epoch 0, every ``eval_every``
    epochs and at the last one.
    """
    if epochs < 1 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"need epochs, batch_size, eval_every >= 1: {epochs, batch_size}")
    device = next(model.parameters()).device
    x, y = task.x_train.to(device), task.y_train.to(device)
    history = [{"epoch": 0.0, "loss": float("nan"), **evaluate(model, task)}]
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size].to(device)
            loss = loss_fn(model(x[index]), y[index], index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        if epoch % eval_every == 0 or epoch == epochs:
            history.append({"epoch": float(epoch), "loss": total / len(x), **evaluate(model, task)})
    return history
