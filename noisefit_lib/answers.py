"""Greedy answers with a confidence, and their scores: the tiny Llama's and the real model's.

* :func:`greedy_tokens`: the one generate-with-confidence step: greedy continuation of a
  left-padded batch and the log-probability of each new token. Both Part I's tiny Llama
  (:func:`generate_answers`) and SmolLM2 (:func:`noisefit_lib.geo_facts.answer`) answer through it;
* :func:`prompt_ids` and :func:`generate_answers`: prompts of the facts world (the appended
  ``<eos>`` stripped, left padding), the decoded answers and their sequence probability;
* :class:`Evaluation` and :func:`evaluate`: answers to QA items scored by the world
  (:meth:`noisefit_lib.facts.World.score_all`).

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py (answers, confidence, scores);
used by every chapter of Part I.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from noisefit_lib import facts, training
from noisefit_lib.facts_tokenizer import EOS_ID, PAD_ID, SPECIAL_TOKENS, encode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

N_SPECIAL = len(SPECIAL_TOKENS)
"""Ids below this are Part I's special tokens (``<pad> <bos> <eos> <unk>``)."""


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts for generation: ``<bos> ...`` with the appended ``<eos>`` stripped."""
    encoded = encode(tokenizer, prompts)
    return [seq[:-1] if seq and seq[-1] == EOS_ID else seq for seq in encoded]


@torch.no_grad()
def greedy_tokens(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuation of one left-padded batch, with the log-probability of each new token.

    Args:
        model: the causal LM (its device is used); a PEFT model works too.
        ids: prompt token ids, left-padded, shape (B, T).
        mask: their attention mask, shape (B, T).
        pad_id: the padding token id.
        eos_id: the token id that ends a continuation.
        max_new_tokens: tokens to generate per row.

    Returns:
        ``(new, token_logp)``: the generated ids per row (padded after an end with ``pad_id``)
        and their log-probabilities under the model, shape (B, n_new), on the CPU.
    """
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,  # greedy: clear sampling defaults a checkpoint's config may carry
        top_p=None,
        top_k=None,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :].cpu()  # (B, n_new)
    logp = torch.stack(out.logits, dim=1).float().log_softmax(-1).cpu()  # (B, n_new, V)
    return new.tolist(), logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 4,
    batch_size: int = 256,
) -> tuple[list[str], np.ndarray]:
    """Greedy continuations of ``prompts`` and the probability of each answer.

    Prompts are left-padded into batches and passed to ``model.generate`` (greedy,
    ``max_new_tokens``). The confidence of a continuation is the product of the model's
    probabilities of its answer tokens: those before the first end token (``.``) or special
    token, and at least the first generated token.

    Args:
        model: the causal LM (its device is used).
        tokenizer: its tokenizer.
        prompts: question texts ending in ``A:``.
        max_new_tokens: tokens to generate per prompt.
        batch_size: prompts per ``generate`` call.

    Returns:
        ``(texts, confidence)``: the decoded continuations (special tokens kept, so the
        scorer sees where the answer ended) and an array of shape (N,) with values in [0, 1].
    """
    was_training = model.training
    model.eval()
    end_id = tokenizer.convert_tokens_to_ids(facts.END)
    texts: list[str] = []
    confidence: list[float] = []
    ids_all = prompt_ids(tokenizer, prompts)
    for start in range(0, len(ids_all), batch_size):
        ids, mask = training.pad(ids_all[start : start + batch_size], side="left", pad_id=PAD_ID)
        new, token_logp = greedy_tokens(
            model, ids, mask, pad_id=PAD_ID, eos_id=EOS_ID, max_new_tokens=max_new_tokens
        )
        for row, row_logp in zip(new, token_logp, strict=True):
            stop = next((k for k, t in enumerate(row) if t == end_id or t < N_SPECIAL), len(row))
            confidence.append(float(row_logp[: max(1, stop)].sum().exp()))
            texts.append(tokenizer.decode([t for t in row if t != PAD_ID]))
    model.train(was_training)
    return texts, np.asarray(confidence)


@dataclass
class Evaluation:
    """Answers of a model to a list of QA items, scored.

    Attributes:
        items: the questions.
        generated: the raw continuations.
        answers: the parsed answers (:func:`facts.parse_answer`).
        outcomes: one of :data:`facts.OUTCOMES` per item.
        confidence: the probability of each answer, shape (N,).
    """

    items: list[facts.QAItem]
    generated: list[str]
    answers: list[str]
    outcomes: list[str]
    confidence: np.ndarray = field(repr=False)

    def counts(self) -> dict[str, int]:
        """Counts of each outcome."""
        return facts.outcome_counts(self.outcomes)

    def rates(self) -> dict[str, float]:
        """Fraction of each outcome."""
        return facts.outcome_rates(self.outcomes)

    def correct(self) -> np.ndarray:
        """Boolean array: which answers were correct."""
        return np.array([o == "correct" for o in self.outcomes])


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: facts.World,
    items: Sequence[facts.QAItem],
    *,
    max_new_tokens: int = 4,
    batch_size: int = 256,
) -> Evaluation:
    """Answer ``items`` greedily with :func:`generate_answers` and score them with ``world``."""
    generated, confidence = generate_answers(
        model,
        tokenizer,
        [it.prompt for it in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    answers = [facts.parse_answer(g) for g in generated]
    return Evaluation(
        items=list(items),
        generated=generated,
        answers=answers,
        outcomes=world.score_all(answers, items),
        confidence=confidence,
    )


__all__ = ["Evaluation", "evaluate", "generate_answers", "greedy_tokens", "prompt_ids"]
