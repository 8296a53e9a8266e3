"""Answers from a fine-tuned model: batched generation that stops at the end of the turn.

``predict`` on the command line calls :func:`generate_responses`. The model is used where it
is (its device and dtype): the prompts are moved to it, not the other way round. Generation
stops at the tokenizer's EOS or at an end-of-turn marker (``<|im_end|>``, ``<|endoftext|>``,
``<|eot_id|>``) that is a single token of the vocabulary, and each answer is cut at the first
such token *before* decoding, so that removing special tokens cannot let the answer run past
its turn.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from noisefit_lib.noisefit.data import format_prompt

END_OF_TURN_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
"""Texts that end a turn in the common chat formats (ChatML, GPT-2, Llama 3, Llama 2)."""

PAPER_REPETITION_PENALTY = 1.2
"""The repetition penalty of the official NoiseFiT evaluation (the library's default is 1.0)."""


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The ids that end an answer: EOS, and each marker that is one token of the vocabulary."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocab = tokenizer.get_vocab()
    ids += [int(vocab[m]) for m in END_OF_TURN_MARKERS if m in vocab]
    return sorted(set(ids))


def cut_at_end_of_turn(
    ids: Sequence[int], stop_ids: Sequence[int], pad_token_id: int | None = None
) -> list[int]:
    """``ids`` up to (not including) the first stop token; trailing padding dropped."""
    out: list[int] = []
    for t in ids:
        if t in stop_ids:
            break
        out.append(int(t))
    while out and pad_token_id is not None and out[-1] == pad_token_id:
        out.pop()
    return out


def decode_answer(tokenizer: Any, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """The text of one answer: cut at the end of turn, then decoded without special tokens.

    Markers that the tokenizer splits into several tokens (a word-level toy vocabulary) are cut
    from the decoded text as well.
    """
    pad = tokenizer.pad_token_id
    text = tokenizer.decode(cut_at_end_of_turn(ids, stop_ids, pad), skip_special_tokens=True)
    for marker in END_OF_TURN_MARKERS:
        text = text.split(marker)[0]
    return text.strip()


def prompt_ids(tokenizer: Any, prompt: str, template: str) -> list[int]:
    """The prompt's token ids as generation sees them (no EOS appended to the prompt)."""
    seq = list(tokenizer(format_prompt(prompt, template))["input_ids"])
    if tokenizer.eos_token_id is not None and len(seq) > 1 and seq[-1] == tokenizer.eos_token_id:
        seq = seq[:-1]  # tokenizers whose template appends <eos> to every text
    return seq


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    template: str = "chatml_v1",
    batch_size: int = 8,
    num_samples: int = 1,
    max_new_tokens: int = 50,
    do_sample: bool = False,
    temperature: float = 0.5,
    top_p: float = 0.9,
    top_k: int = 40,
    repetition_penalty: float = 1.0,
    stop_strings: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``num_samples`` answers per prompt, left-padded in batches, on the model's device.

    Args:
        model: a causal LM (or a PEFT model over one), on any device and in any dtype.
        tokenizer: its tokenizer.
        prompts: the questions, formatted with ``template``.
        template: one of :data:`noisefit_lib.noisefit.data.TEMPLATES`.
        batch_size: prompts per ``generate`` call.
        num_samples: answers per prompt (use ``do_sample`` for different ones).
        max_new_tokens: the longest answer.
        do_sample: sample instead of greedy decoding (the paper samples with T 0.5, top-p 0.9,
            top-k 40).
        temperature: sampling temperature.
        top_p: nucleus mass.
        top_k: candidates kept.
        repetition_penalty: 1.0 is none; the paper uses :data:`PAPER_REPETITION_PENALTY`.
        stop_strings: texts that also end an answer (generation stops there; the answer is cut
            before the first one).

    Returns:
        One dict per answer: ``prompt``, ``sample`` (0-based) and ``response``.
    """
    device = next(model.parameters()).device
    stop = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad,
        "repetition_penalty": repetition_penalty,
    }
    if stop:
        gen["eos_token_id"] = stop
    if do_sample:
        gen.update(temperature=temperature, top_p=top_p, top_k=top_k)
    if stop_strings:
        gen.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        ids = [prompt_ids(tokenizer, p, template) for p in chunk]
        n = max(len(s) for s in ids)
        x = torch.tensor([[pad] * (n - len(s)) + s for s in ids], device=device)
        mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in ids], device=device)
        for k in range(num_samples):
            y = model.generate(input_ids=x, attention_mask=mask, **gen)
            for prompt, answer in zip(chunk, y[:, n:].tolist(), strict=True):
                text = decode_answer(tokenizer, answer, stop)
                for marker in stop_strings or ():
                    text = text.split(marker)[0].strip()
                rows.append({"prompt": prompt, "sample": k, "response": text})
    return rows
