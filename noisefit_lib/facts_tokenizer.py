"""Part I's word-level tokenizer: every word of the facts world is one token.

:func:`build_tokenizer` is the ``tokenizers`` WordLevel + WhitespaceSplit recipe wrapped as a
``transformers`` ``PreTrainedTokenizerFast`` (``<pad> <bos> <eos> <unk>`` are ids 0-3; every
text is wrapped as ``<bos> ... <eos>``), so ``save_pretrained``/``from_pretrained``, the HF
``Trainer`` and PEFT work as on a real model. :func:`encode` refuses out-of-vocabulary words.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py (The tokenizer and the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from noisefit_lib import checkpoints

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens, with ids 0, 1, 2, 3."""
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` plus :data:`SPECIAL_TOKENS` (ids 0-3).

    Text is split on whitespace only; unknown words map to ``<unk>``; every encoded text is
    wrapped as ``<bos> ... <eos>``. Padding is on the right (set ``padding_side="left"`` to
    batch prompts for generation, as :func:`generate_answers` does by hand).

    Args:
        words: the vocabulary (duplicates are ignored; order fixes the ids).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    checkpoints.import_transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, ``<bos> ... <eos>`` included; fails on out-of-vocabulary words."""
    ids = tokenizer(list(texts))["input_ids"]
    for text, seq in zip(texts, ids, strict=True):
        if UNK_ID in seq:
            raise ValueError(f"out-of-vocabulary word in {text!r}")
    return [list(s) for s in ids]


__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "UNK_ID", "build_tokenizer", "encode"]
