"""Part III's web-like noisy captions for digits, an alignment scorer, bucketing and metrics.

* :func:`attributes`: three visual attributes of each 8x8 digit (its class, its ink, bold or
  thin, and its width, wide or narrow; the last two split at the training medians);
* :func:`clean_caption` and :func:`noisy_corpus`: the caption grammar ``<digit> <ink> <width>``
  and a corpus of several captions per training image, a share of them replaced like web text:
  boilerplate (a few fixed strings sharing their first word), a caption of another image, or a
  partial caption with one attribute wrong;
* :class:`DualEncoder` and :func:`train_scorer`: a small contrastive (CLIP-like) image-text model
  trained on a held-out clean split, standing in for the external CLIP of the paper, and
  :func:`alignment_scores` (cosine similarity);
* :func:`fit_bin_edges` and :func:`bucketize`: the official alignment-level bucketing (uniform
  bins over all training scores, inner edges, ``right=True``);
* :func:`caption_metrics`: exact attribute match, per-attribute accuracy, boilerplate rate.

Explained in: notebooks/part3_noisy_labels/23_noise_aware_captioning.py (cite: kang2023noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INK_WORDS = ("thin", "bold")
WIDTH_WORDS = ("narrow", "wide")
BOILERPLATE = (("photo", "of", "item"), ("photo", "for", "sale"), ("photo", "click", "here"))
NOISE_KINDS = ("clean", "boilerplate", "swapped", "partial")
CAPTION_LEN = 3
BOS = 0
VOCAB = (
    "<bos>",
    *DIGIT_WORDS,
    *INK_WORDS,
    *WIDTH_WORDS,
    *sorted({w for caption in BOILERPLATE for w in caption}),
)
TOKEN = {word: i for i, word in enumerate(VOCAB)}


def attribute_values(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Raw ink (mean pixel) and width (columns holding ink) of images ``x`` (N, 64) in [0, 1]."""
    images = x.reshape(-1, 8, 8).numpy()
    ink = images.mean(axis=(1, 2))
    width = (images.max(axis=1) > 0.3).sum(axis=1).astype(np.float64)
    return ink, width


@dataclass(frozen=True)
class Thresholds:
    """Medians of ink and width on the training images: the attribute split points."""

    ink: float
    width: float


def fit_thresholds(x_train: torch.Tensor) -> Thresholds:
    """The training medians of ink and width (width ties go to ``wide``)."""
    ink, width = attribute_values(x_train)
    return Thresholds(float(np.median(ink)), float(np.median(width)))


def attributes(x: torch.Tensor, y: torch.Tensor, thresholds: Thresholds) -> np.ndarray:
    """(N, 3) int array: digit class, ink (0 thin, 1 bold), width (0 narrow, 1 wide)."""
    ink, width = attribute_values(x)
    return np.stack(
        [y.numpy(), (ink > thresholds.ink).astype(int), (width >= thresholds.width).astype(int)], 1
    )


def clean_caption(attrs: np.ndarray) -> np.ndarray:
    """Token ids (N, 3) of the grammar ``<digit> <ink> <width>`` for attribute rows (N, 3)."""
    attrs = np.atleast_2d(attrs)
    digit = np.array([TOKEN[w] for w in DIGIT_WORDS])[attrs[:, 0]]
    ink = np.array([TOKEN[w] for w in INK_WORDS])[attrs[:, 1]]
    width = np.array([TOKEN[w] for w in WIDTH_WORDS])[attrs[:, 2]]
    return np.stack([digit, ink, width], 1)


def decode_words(tokens: Sequence[int]) -> str:
    """A caption's words joined by spaces."""
    return " ".join(VOCAB[int(t)] for t in tokens)


@dataclass(frozen=True)
class Corpus:
    """Image-caption pairs: ``image`` indexes the training images, ``kind`` is the noise kind."""

    image: np.ndarray
    tokens: np.ndarray
    kind: np.ndarray

    def share(self, kind: str) -> float:
        """Share of pairs of one noise kind."""
        return float(np.mean(self.kind == NOISE_KINDS.index(kind)))


def noise_mix(noise: float, boilerplate_share: float = 0.6) -> dict[str, float]:
    """Shares of each caption kind: ``noise`` split into boilerplate and equal swapped/partial."""
    if not 0 <= noise <= 1 or not 0 <= boilerplate_share <= 1:
        raise ValueError(f"need shares in [0, 1], got {noise}, {boilerplate_share}")
    rest = noise * (1 - boilerplate_share) / 2
    return {
        "clean": 1 - noise,
        "boilerplate": noise * boilerplate_share,
        "swapped": rest,
        "partial": rest,
    }


def noisy_corpus(
    attrs: np.ndarray,
    noise: float,
    *,
    captions_per_image: int,
    rng: np.random.Generator,
    boilerplate_share: float = 0.6,
) -> Corpus:
    """``captions_per_image`` captions per image; each is noisy with probability ``noise``.

    A noisy caption is boilerplate (a uniformly drawn fixed string), swapped (the clean caption
    of another, uniformly drawn, image) or partial (the clean caption with one uniformly drawn
    attribute changed to another value), in the shares of :func:`noise_mix`.
    """
    n = len(attrs)
    image = np.repeat(np.arange(n), captions_per_image)
    mix = noise_mix(noise, boilerplate_share)
    kind = rng.choice(len(NOISE_KINDS), size=len(image), p=[mix[k] for k in NOISE_KINDS])
    rows = attrs[image].copy()
    swapped = kind == NOISE_KINDS.index("swapped")
    other = (image + rng.integers(1, n, size=len(image))) % n
    rows[swapped] = attrs[other[swapped]]
    partial = np.flatnonzero(kind == NOISE_KINDS.index("partial"))
    which = rng.integers(0, 3, size=len(partial))
    sizes = np.array([10, 2, 2])[which]
    shift = rng.integers(1, sizes)  # a different value of the chosen attribute
    rows[partial, which] = (rows[partial, which] + shift) % sizes
    tokens = clean_caption(rows)
    boiler = np.flatnonzero(kind == NOISE_KINDS.index("boilerplate"))
    table = np.array([[TOKEN[w] for w in caption] for caption in BOILERPLATE])
    tokens[boiler] = table[rng.integers(0, len(BOILERPLATE), size=len(boiler))]
    return Corpus(image=image, tokens=tokens, kind=kind)


class DualEncoder(torch.nn.Module):
    """A CLIP-like pair: an MLP image tower and a bag-of-tokens text tower into ``dim``."""

    def __init__(self, dim: int = 32, hidden: int = 128, *, generator: torch.Generator) -> None:
        super().__init__()
        self.image = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim)
        )
        self.text = torch.nn.Embedding(len(VOCAB), dim)
        self.log_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    p.normal_(0, p.shape[-1] ** -0.5, generator=generator)

    def embed(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm image (N, dim) and text (N, dim) embeddings; text = mean token embedding."""
        return F.normalize(self.image(x), dim=-1), F.normalize(self.text(tokens).mean(1), dim=-1)


def train_scorer(
    x: torch.Tensor,
    tokens: torch.Tensor,
    *,
    generator: torch.Generator,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> DualEncoder:
    """Train a :class:`DualEncoder` with the symmetric InfoNCE loss of CLIP on clean pairs."""
    model = DualEncoder(generator=generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=generator)[:batch_size]
        img, txt = model.embed(x[idx], tokens[idx])
        logits = model.log_scale.exp() * img @ txt.T
        # identical captions in a batch are positives for each other (multi-positive targets)
        same = (tokens[idx][:, None, :] == tokens[idx][None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = -(target * logits.log_softmax(1)).sum(1).mean()
        loss = loss - (target * logits.T.log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def alignment_scores(model: DualEncoder, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image with its caption, s = cos(f(I), g(T)), shape (N,)."""
    img, txt = model.embed(x, tokens)
    return (img * txt).sum(-1)


def fit_bin_edges(scores: np.ndarray | torch.Tensor, n_bins: int) -> np.ndarray:
    """Uniform bin edges over [min, max] of the training scores (n_bins + 1 values, float64).

    The official code fits ``KBinsDiscretizer(strategy="uniform")`` on all training scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.linspace(scores.min(), scores.max(), n_bins + 1)


def bucketize(scores: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    """Alignment level z = #(inner edges <= s) in {0, ..., n_bins - 1} (float32 comparison).

    Scores beyond the fitted range go to the first or the last level, as in the official
    ``AlignmentLevelBucket`` (``torch.bucketize(s, edges[1:-1], right=True)``).
    """
    inner = torch.tensor(np.asarray(edges)[1:-1]).float()
    return torch.bucketize(torch.as_tensor(scores).float(), inner, right=True)


def caption_metrics(generated: np.ndarray, attrs: np.ndarray) -> dict[str, float]:
    """Exact match of all three attributes, per-attribute accuracy and boilerplate rate."""
    generated = np.asarray(generated)
    truth = clean_caption(attrs)
    hits = generated == truth
    boiler_words = np.array([TOKEN[c[0]] for c in BOILERPLATE])
    return {
        "exact": float(hits.all(1).mean()),
        "digit_acc": float(hits[:, 0].mean()),
        "ink_acc": float(hits[:, 1].mean()),
        "width_acc": float(hits[:, 2].mean()),
        "boilerplate": float(np.isin(generated[:, 0], boiler_words).mean()),
    }
