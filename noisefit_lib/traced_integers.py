"""Traced-integer running sums with static and dynamic chain-of-thought noise.

A problem is a list of single digits; its trace is the list of zero-padded running totals and
its answer the last total, written as ``3+5+9=03;08;17>17#``. Two corruptions, after
Havrilla & Iyer (2024, TInt):

* **static** noise corrupts the *finished* document: each digit of the trace and of the answer
  is resampled uniformly with probability ``p``; later steps are not recomputed;
* **dynamic** noise corrupts each running total *as it is computed* (each digit resampled with
  probability ``p``) and continues from the corrupted value, so an error propagates to every
  later step and to the answer, and the trace stays consistent.

``doc`` (the contamination fraction) is the share of documents that receive noise. The nominal
rate is ``p``; the effective rate is the share of documents whose answer is wrong.

The static law matches the official code (``Dahoas/transformer_arithmetic``) in
tests/test_tint_reference.py; its dynamic noise differs slightly (replacements from 0-8, leading
zeros kept), as that test's docstring says.

Explained in: notebooks/part3_noisy_labels/17_noise_in_chains_of_thought.py. Cite: havrilla2024tint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["clean", "static", "dynamic"]
WIDTH = 2  # digits of each zero-padded running total
VOCAB = "0123456789+=;>#"


@dataclass(frozen=True)
class Document:
    """One training document: its operands, visible trace, answer and whether it was noised."""

    operands: tuple[int, ...]
    trace: tuple[int, ...]
    answer: int
    noised: bool

    @property
    def prompt(self) -> str:
        """The problem, up to and including '='."""
        return "+".join(map(str, self.operands)) + "="

    @property
    def text(self) -> str:
        """The full document, e.g. '3+5+9=03;08;17>17#'."""
        steps = ";".join(f"{v:0{WIDTH}d}" for v in self.trace)
        return f"{self.prompt}{steps}>{self.answer:0{WIDTH}d}#"

    @property
    def answer_wrong(self) -> bool:
        """Whether the written answer differs from the true sum."""
        return self.answer != sum(self.operands)


def corrupt_digits(value: int, p: float, rng: np.random.Generator) -> int:
    """Resample each of the WIDTH digits of ``value`` uniformly (0-9) with probability p."""
    digits = [int(c) for c in f"{value:0{WIDTH}d}"]
    for i in range(WIDTH):
        if rng.random() < p:
            digits[i] = int(rng.integers(10))
    return int("".join(map(str, digits)))


def clean_trace(operands: tuple[int, ...]) -> tuple[int, ...]:
    """Running totals of the operands."""
    return tuple(int(v) for v in np.cumsum(operands))


def make_document(
    operands: tuple[int, ...], kind: Kind, p: float, noised: bool, rng: np.random.Generator
) -> Document:
    """Build one document with static, dynamic or no noise (``noised`` gates the noise).

    Raises:
        ValueError: on an unknown kind or p outside [0, 1].
    """
    if kind not in ("clean", "static", "dynamic") or not 0 <= p <= 1:
        raise ValueError(f"bad noise {kind!r}, p={p}")
    if kind == "clean" or not noised:
        trace = clean_trace(operands)
        return Document(operands, trace, trace[-1], False)
    if kind == "static":
        trace = tuple(corrupt_digits(v, p, rng) for v in clean_trace(operands))
        return Document(operands, trace, corrupt_digits(clean_trace(operands)[-1], p, rng), True)
    state, trace = 0, []
    for x in operands:  # dynamic: corrupt each new state and carry on from it
        state = corrupt_digits((state + x) % 10**WIDTH, p, rng)
        trace.append(state)
    return Document(operands, tuple(trace), trace[-1], True)


def dataset(
    n: int,
    kind: Kind,
    p: float,
    doc: float,
    rng: np.random.Generator,
    n_operands: int = 6,
) -> list[Document]:
    """``n`` documents of ``n_operands`` single digits; a share ``doc`` of them is noised."""
    if not 0 <= doc <= 1:
        raise ValueError(f"doc fraction {doc} outside [0, 1]")
    operands = rng.integers(0, 10, size=(n, n_operands))
    noised = rng.random(n) < doc
    return [
        make_document(tuple(int(v) for v in row), kind, p, bool(flag), rng)
        for row, flag in zip(operands, noised, strict=True)
    ]


def effective_rate(docs: list[Document]) -> float:
    """Share of documents whose written answer is wrong (the effective corruption rate)."""
    return float(np.mean([d.answer_wrong for d in docs])) if docs else 0.0


def encode(text: str) -> list[int]:
    """Character ids in :data:`VOCAB`."""
    return [VOCAB.index(c) for c in text]


def decode(ids: list[int]) -> str:
    """Inverse of :func:`encode`."""
    return "".join(VOCAB[i] for i in ids)
