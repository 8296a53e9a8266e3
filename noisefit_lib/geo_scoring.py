"""Scoring answers to the real facts: the four outcomes for free text, and evaluations.

* :func:`score_answer`: the book's four outcomes (``correct``, ``hallucinated`` = a wrong answer
  of the right type, ``abstained``, ``malformed``) for a free-text answer to a
  :class:`~noisefit_lib.geo_facts.RealFact`, via :func:`first_candidate` and
  :func:`is_abstention`;
* :func:`evaluate` and :class:`RealEvaluation`: greedy answers of a model
  (:func:`noisefit_lib.smollm2.answer`), scored, summarised per relation with 95 % Wilson
  intervals (:func:`noisefit_lib.stats.wilson`).

Explained in: notebooks/part1_noisefit/05_noisefit_end_to_end.py (Real model, real facts); the
experiment is ``tools/real_model_experiment.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from noisefit_lib import facts, smollm2, stats
from noisefit_lib.geo_facts import ABSTAIN_PHRASES, RELATIONS, FactSet, RealFact, normalise

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def first_candidate(
    text: str, table: dict[str, frozenset[str]], *, exclude: str = ""
) -> tuple[str, frozenset[str]] | None:
    """The first answer of the right type named in ``text`` (longest match at each position).

    Args:
        text: a free-text answer.
        table: normalised surface form -> canonical answers (a relation of
            :attr:`FactSet.candidates`).
        exclude: a name to ignore (the question's subject: "The capital of France is Paris"
            must not count "France"); a candidate that only partly overlaps it still counts
            ("Mexico City" for Mexico).

    Returns:
        ``(surface form, canonical answers)``, or ``None`` when no candidate is named.
    """
    words = normalise(text).split()
    skip = normalise(exclude).split()
    blocked = [False] * len(words)
    if skip:
        for i in range(len(words) - len(skip) + 1):
            if words[i : i + len(skip)] == skip:
                blocked[i : i + len(skip)] = [True] * len(skip)
    longest = max((len(k.split()) for k in table), default=1)
    for i in range(len(words)):
        for n in range(min(longest, len(words) - i), 0, -1):
            if all(blocked[i : i + n]):  # the subject itself (or part of it)
                continue
            key = " ".join(words[i : i + n])
            if key in table:
                return key, table[key]
    return None


def is_abstention(text: str) -> bool:
    """Whether ``text`` says "I don't know" in one of the :data:`ABSTAIN_PHRASES` ways."""
    padded = f" {normalise(text)} "
    return any(f" {normalise(p)} " in padded for p in ABSTAIN_PHRASES)


def score_answer(text: str, fact: RealFact, fact_set: FactSet) -> str:
    """One of :data:`noisefit_lib.facts.OUTCOMES` for a free-text answer to ``fact``.

    The first answer of the right type named in the text (the question's subject excluded)
    decides: ``correct`` if it is the fact's answer or an alias, else ``hallucinated``. A text
    naming none is ``abstained`` if it says "I don't know" (:func:`is_abstention`), else
    ``malformed``.
    """
    table = fact_set.candidates[fact.relation]
    hit = first_candidate(text, table, exclude=fact.subject)
    if hit is not None:
        gold = {a for form in fact.accepted for a in table.get(normalise(form), ())}
        return "correct" if (hit[1] & gold) or fact.answer in hit[1] else "hallucinated"
    return "abstained" if is_abstention(text) else "malformed"


def rate_with_ci(count: int, n: int) -> dict[str, float]:
    """``{"rate", "low", "high"}``: a rate with its 95 % Wilson interval."""
    interval = stats.wilson(count, n)
    return {"rate": interval.mean, "low": interval.low, "high": interval.high}


@dataclass
class RealEvaluation:
    """Answers of a model to real facts, scored.

    Attributes:
        facts: the questions asked.
        texts: the model's answers.
        outcomes: one of :data:`noisefit_lib.facts.OUTCOMES` per fact.
        confidence: the probability of each answer, shape (N,).
    """

    facts: list[RealFact]
    texts: list[str]
    outcomes: list[str]
    confidence: np.ndarray = field(repr=False)

    def subset(self, keep: Iterable[RealFact]) -> RealEvaluation:
        """The evaluation restricted to the facts in ``keep`` (in this evaluation's order)."""
        wanted = set(keep)
        idx = [i for i, f in enumerate(self.facts) if f in wanted]
        return RealEvaluation(
            [self.facts[i] for i in idx],
            [self.texts[i] for i in idx],
            [self.outcomes[i] for i in idx],
            self.confidence[idx],
        )

    def records(self) -> list[list[Any]]:
        """``[question, answer text, outcome, confidence]`` per fact (JSON-ready)."""
        return [
            [f.question, t, o, round(float(c), 4)]
            for f, t, o, c in zip(
                self.facts, self.texts, self.outcomes, self.confidence, strict=True
            )
        ]

    def summary(self) -> dict[str, Any]:
        """Counts, rates and 95 % Wilson intervals, overall (``"all"``) and per relation.

        Each entry has ``n``, ``counts`` (the four outcomes), ``accuracy`` and
        ``hallucination`` (``{"rate", "low", "high"}``), ``abstention``, ``malformed`` (rates)
        and ``ece`` (15 bins, confidence vs correct).
        """
        from noisefit_lib import metrics

        groups: dict[str, list[int]] = {"all": list(range(len(self.facts)))}
        for rel in RELATIONS:
            idx = [i for i, f in enumerate(self.facts) if f.relation == rel]
            if idx:
                groups[rel] = idx
        out: dict[str, Any] = {}
        for name, idx in groups.items():
            n = len(idx)
            if n == 0:
                continue
            counts = facts.outcome_counts(self.outcomes[i] for i in idx)
            correct = np.array([self.outcomes[i] == "correct" for i in idx])
            out[name] = {
                "n": n,
                "counts": counts,
                "accuracy": rate_with_ci(counts["correct"], n),
                "hallucination": rate_with_ci(counts["hallucinated"], n),
                "abstention": counts["abstained"] / n,
                "malformed": counts["malformed"] / n,
                "ece": metrics.expected_calibration_error(self.confidence[idx], correct),
            }
        return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[RealFact],
    fact_set: FactSet,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> RealEvaluation:
    """Answer ``items`` greedily (:func:`noisefit_lib.smollm2.answer`) and score them."""
    texts, confidence = smollm2.answer(
        model,
        tokenizer,
        [f.question for f in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    outcomes = [score_answer(t, f, fact_set) for t, f in zip(texts, items, strict=True)]
    return RealEvaluation(list(items), texts, outcomes, confidence)


__all__ = [
    "RealEvaluation",
    "evaluate",
    "first_candidate",
    "is_abstention",
    "rate_with_ci",
    "score_answer",
]
