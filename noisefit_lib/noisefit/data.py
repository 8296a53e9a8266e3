"""Prompt/response CSV files, prompt templates, tokenisation and padding for NoiseFiT training.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noisefit_lib.noisefit.losses import IGNORE_INDEX

REQUIRED_COLUMNS: tuple[str, ...] = ("prompt", "response")

TEMPLATES: dict[str, tuple[str, str]] = {
    # v1's ChatML-like text (plain strings, note the space before the first <|im_end|>)
    "chatml_v1": (
        "<|im_start|>user\n{prompt} <|im_end|>\n<|im_start|>assistant\n",
        "{response}<|im_end|>\n",
    ),
    # v2's Alpaca format
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n",
        "{response}",
    ),
    # plain concatenation (word-level toy tokenizers)
    "plain": ("{prompt} ", "{response}"),
}
"""Name -> (prompt part, response part); the training text is their concatenation."""


def _check_template(template: str) -> tuple[str, str]:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def read_pairs(
    path: str | Path, *, columns: Sequence[str] = REQUIRED_COLUMNS
) -> list[dict[str, str]]:
    """Read a CSV file with (at least) the given columns.

    Args:
        path: CSV file.
        columns: required column names.

    Returns:
        One dict per row, with the required columns as strings.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when a column is missing, or the file has no data row.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise ValueError(
                f"{p}: empty file (need a header {','.join(columns)} and at least one row)"
            )
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(
                f"{p}: missing column(s) {', '.join(missing)}; required: {', '.join(columns)}; "
                f"found: {', '.join(header) or 'none'}"
            )
        rows = [{c: (row.get(c) or "") for c in columns} for row in reader]
    if not rows:
        raise ValueError(
            f"{p}: no data rows (need a header {','.join(columns)} and at least one row)"
        )
    return rows


def format_prompt(prompt: str, template: str = "chatml_v1") -> str:
    """The prompt part of a training text (what ``predict`` feeds to ``generate``)."""
    return _check_template(template)[0].format(prompt=prompt)


def format_pair(prompt: str, response: str, template: str = "chatml_v1") -> str:
    """The full training text of one pair."""
    head, tail = _check_template(template)
    return head.format(prompt=prompt) + tail.format(response=response)


def tokenize_pairs(
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    *,
    template: str = "chatml_v1",
    max_length: int = 256,
    completion_only: bool = False,
    add_eos: bool = False,
) -> list[dict[str, list[int]]]:
    """Tokenise pairs into ``input_ids`` (and ``labels`` when ``completion_only``).

    Args:
        tokenizer: a HF tokenizer.
        pairs: dicts with ``prompt`` and ``response``.
        template: one of :data:`TEMPLATES`.
        max_length: truncate to this many tokens.
        completion_only: mask the prompt tokens out of the loss (v1 trains on the whole text).
        add_eos: end each text with the tokenizer's EOS, so that the model learns to stop
            (see :func:`ends_with_eos`); the command line's ``train`` does, unless ``--no_eos``.

    Returns:
        One dict per pair.
    """
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ValueError("add_eos=True, but the tokenizer has no eos_token_id")
    out = []
    for pair in pairs:
        text = format_pair(pair["prompt"], pair["response"], template)
        ids = list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
        if add_eos and not ends_with_eos(ids, eos) and len(ids) < max_length:
            ids.append(eos)  # a truncated text gets none: the model must not learn to stop there
        item: dict[str, list[int]] = {"input_ids": ids}
        if completion_only:
            head = tokenizer(format_prompt(pair["prompt"], template))["input_ids"]
            n = len(head)
            if tokenizer.eos_token_id is not None and head and head[-1] == tokenizer.eos_token_id:
                n -= 1
            item["labels"] = [IGNORE_INDEX] * min(n, len(ids)) + list(ids[n:])
        out.append(item)
    return out


def ends_with_eos(ids: Sequence[int], eos_token_id: int) -> bool:
    """Whether a text already ends its turn with EOS.

    A ChatML tokenizer whose EOS is ``<|im_end|>`` (SmolLM2, Qwen) ends ``chatml_v1`` texts with
    ``<|im_end|>`` and a newline, so EOS counts as present when it is among the last two tokens.
    """
    return eos_token_id in list(ids[-2:])


@dataclass
class CausalCollator:
    """Right-pad ``input_ids``; ``labels`` copy the ids with -100 on padding.

    Labels are masked by position (the attention mask), not by token id, so an EOS that
    doubles as the pad token still counts when it is real (v1 lost it).

    Attributes:
        pad_token_id: id used for padding.
        pad_to_multiple_of: optional padding multiple.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of examples into a batch."""
        n = max(len(it["input_ids"]) for it in items)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(items), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
        for i, it in enumerate(items):
            seq = torch.as_tensor(it["input_ids"], dtype=torch.long)
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
            lab = it.get("labels")
            labels[i, : len(seq)] = seq if lab is None else torch.as_tensor(lab, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
