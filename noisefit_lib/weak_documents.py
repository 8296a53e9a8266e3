"""Part III's weakly labelled documents: synthetic forms, keyword rules and a layout-aware tagger.

* :func:`make_documents`: seeded synthetic "invoices" on a grid of rows and columns: each has
  four entities (DATE, TOTAL, VENDOR, INVOICE_ID, one token each), two distractor key-value
  pairs (a subtotal and a tax amount, tagged O) and filler words; a *template* fixes where each
  key sits and whether its value is to its right or below it;
* :func:`rule_labels`: a keyword labeller that ignores layout: the token after a key in reading
  order gets the key's entity when its kind fits, and the TOTAL rule also fires on "Subtotal"
  (a substring match). It is right on right-of layouts and wrong or silent on below layouts;
* :func:`token_table`: per-token features (the token, its left and upper neighbours on the
  grid, its position), which is what the tagger sees;
* :class:`Tagger` and :func:`train_tagger`: a small MLP over a token and its neighbours,
  trained for a fixed number of steps with any per-token loss ``(logits, labels, weights)``;
* :func:`entity_macro_f1`: macro-F1 over the four entity types (each entity is one token, so
  span F1 and token F1 agree).

Explained in: notebooks/part3_noisy_labels/22_noise_aware_layout_training.py (NAT; cite:
sarkhel2024nat).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TAGS = ("O", "DATE", "TOTAL", "VENDOR", "INVOICE_ID")
ENTITIES = TAGS[1:]
ROWS, COLS = 13, 6
PAD = 0
# Vocabulary: two key words per entity, the distractor keys, then value and filler ids.
KEYS = {"DATE": (1, 2), "TOTAL": (3, 4), "VENDOR": (5, 6), "INVOICE_ID": (7, 8)}
SUBTOTAL, TAX = 9, 10
NUMBERS = range(20, 80)  # amounts and invoice numbers share these ids
DATES = range(80, 100)
WORDS = range(100, 200)  # vendor names and filler words share these ids
VOCAB = 200
# Item order on the page: the four entities, then the subtotal and the tax line.
ITEMS = ("DATE", "TOTAL", "VENDOR", "INVOICE_ID", "SUBTOTAL", "TAX")
# Four templates: (row order of the items, key column, which items put their value below).
TEMPLATES = (
    ((0, 1, 2, 3, 4, 5), 0, ()),
    ((2, 0, 3, 4, 1, 5), 2, ()),
    ((3, 2, 0, 5, 4, 1), 1, ("DATE", "TOTAL", "INVOICE_ID", "SUBTOTAL")),
    ((2, 3, 1, 0, 5, 4), 3, ("TOTAL", "VENDOR", "INVOICE_ID", "TAX")),
)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Documents:
    """Documents as padded grids: ``tokens`` and ``tags`` of shape (N, ROWS, COLS), 0 = empty.

    ``template`` (N,) is each document's template index.
    """

    tokens: np.ndarray
    tags: np.ndarray
    template: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def _value(item: str, rng: np.random.Generator) -> int:
    if item == "DATE":
        return int(rng.choice(DATES))
    if item == "VENDOR":
        return int(rng.choice(WORDS))
    return int(rng.choice(NUMBERS))


def make_documents(
    n: int, *, rng: np.random.Generator, templates: tuple[int, ...] = (0, 1, 2, 3), fill=0.45
) -> Documents:
    """``n`` documents, each from a template drawn uniformly from ``templates``.

    Items sit on every other row (with a random shift of 0 or 1 row for the whole page); cells
    left free hold filler with probability ``fill`` (words, and a few numbers and dates).
    """
    tokens = np.zeros((n, ROWS, COLS), dtype=np.int64)
    tags = np.zeros((n, ROWS, COLS), dtype=np.int64)
    chosen = rng.choice(np.asarray(templates), size=n)
    for d in range(n):
        order, key_col, below = TEMPLATES[chosen[d]]
        shift = int(rng.integers(0, 2))
        for item, slot in zip(ITEMS, order, strict=True):
            r, c = 2 * slot + shift, key_col
            key = {"SUBTOTAL": SUBTOTAL, "TAX": TAX}.get(item) or int(rng.choice(KEYS[item]))
            vr, vc = (r + 1, c) if item in below else (r, c + 1)
            tokens[d, r, c], tokens[d, vr, vc] = key, _value(item, rng)
            tags[d, vr, vc] = TAGS.index(item) if item in ENTITIES else 0
        free = tokens[d] == PAD
        draw = rng.random((ROWS, COLS)) < fill
        filler = rng.choice(
            np.concatenate([np.arange(100, 200), np.arange(20, 80, 4), np.arange(80, 100, 4)]),
            size=(ROWS, COLS),
        )
        tokens[d][free & draw] = filler[free & draw]
    return Documents(tokens, tags, chosen)


def _kind_fits(entity: str, token: int) -> bool:
    if entity == "DATE":
        return token in DATES
    if entity == "VENDOR":
        return token in WORDS
    return token in NUMBERS


def rule_labels(docs: Documents) -> np.ndarray:
    """Keyword rules in reading order (row by row), blind to layout; shape (N, ROWS, COLS).

    For each key, the next non-empty token in reading order is tagged with the key's entity if
    its kind fits (a number, a date, a word); "Subtotal" matches the TOTAL rule too.
    """
    out = np.zeros_like(docs.tags)
    key_of = {k: e for e, ks in KEYS.items() for k in ks} | {SUBTOTAL: "TOTAL"}
    for d in range(len(docs)):
        flat = docs.tokens[d].reshape(-1)
        filled = np.flatnonzero(flat)
        for a, b in itertools.pairwise(filled):
            entity = key_of.get(int(flat[a]))
            if entity is not None and _kind_fits(entity, int(flat[b])):
                out[d].reshape(-1)[b] = TAGS.index(entity)
    return out


@dataclass(frozen=True)
class TokenTable:
    """One row per non-empty token of a set of documents.

    ``feats`` (M, 3) ids (token, left, above), ``pos`` (M, 2) in [0, 1], ``tags`` (M,), ``doc``
    (M,) document index and ``flat`` (M,) cell index.
    """

    feats: torch.Tensor
    pos: torch.Tensor
    tags: torch.Tensor
    doc: torch.Tensor
    flat: torch.Tensor


def _neighbour(grid: np.ndarray, axis: int) -> np.ndarray:
    """The nearest non-empty token to the left (axis=1) or above (axis=0), 0 if none."""
    out = np.zeros_like(grid)
    last = np.zeros(grid.shape[0] if axis == 1 else grid.shape[1], dtype=grid.dtype)
    for i in range(grid.shape[axis]):
        line = grid[:, i] if axis == 1 else grid[i]
        if axis == 1:
            out[:, i] = last
        else:
            out[i] = last
        last = np.where(line != PAD, line, last)
    return out


def token_table(docs: Documents, tags: np.ndarray | None = None) -> TokenTable:
    """Flatten documents to their tokens; ``tags`` (default: the true tags) become the labels."""
    tags = docs.tags if tags is None else tags
    feats, pos, labels, doc, flat = [], [], [], [], []
    rr, cc = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    for d in range(len(docs)):
        grid = docs.tokens[d]
        mask = grid != PAD
        left, above = _neighbour(grid, 1), _neighbour(grid, 0)
        feats.append(np.stack([grid[mask], left[mask], above[mask]], 1))
        pos.append(np.stack([rr[mask] / (ROWS - 1), cc[mask] / (COLS - 1)], 1))
        labels.append(tags[d][mask])
        doc.append(np.full(mask.sum(), d))
        flat.append(np.flatnonzero(mask.reshape(-1)))
    cat = np.concatenate
    return TokenTable(
        torch.as_tensor(cat(feats)),
        torch.as_tensor(cat(pos), dtype=torch.float32),
        torch.as_tensor(cat(labels)),
        torch.as_tensor(cat(doc)),
        torch.as_tensor(cat(flat)),
    )


class Tagger(torch.nn.Module):
    """Embeddings of a token, its left and upper neighbours, plus its position, into an MLP."""

    def __init__(self, dim: int = 32, hidden: int = 128, *, generator: torch.Generator) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, dim)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3 * dim + 2, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, len(TAGS)),
        )
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
                else:
                    p.zero_()

    def forward(self, feats: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (M, len(TAGS)) for token features (M, 3) and positions (M, 2)."""
        return self.net(torch.cat([self.embed(feats).flatten(1), pos], 1))


def train_tagger(
    table: TokenTable,
    loss_fn: LossFn,
    weights: torch.Tensor | None = None,
    *,
    steps: int,
    generator: torch.Generator,
    batch_size: int = 256,
    lr: float = 3e-3,
) -> Tagger:
    """Adam for ``steps`` minibatches drawn with replacement; ``weights`` (M,) go to the loss.

    The loss gets ``(logits, labels, weights)`` of a batch (weights default to ones).
    """
    model = Tagger(generator=generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w = torch.ones(len(table.tags)) if weights is None else weights
    for _ in range(steps):
        i = torch.randint(len(table.tags), (batch_size,), generator=generator)
        loss = loss_fn(model(table.feats[i], table.pos[i]), table.tags[i], w[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: Tagger, table: TokenTable) -> torch.Tensor:
    """Softmax probabilities (M, len(TAGS))."""
    return F.softmax(model(table.feats, table.pos), dim=1)


def entity_macro_f1(pred: np.ndarray | torch.Tensor, gold: np.ndarray | torch.Tensor) -> float:
    """Mean over the four entity types of F1 (an absent type with no predictions scores 1)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    scores = []
    for k in range(1, len(TAGS)):
        tp = int(((pred == k) & (gold == k)).sum())
        fp, fn = int(((pred == k) & (gold != k)).sum()), int(((pred != k) & (gold == k)).sum())
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))
