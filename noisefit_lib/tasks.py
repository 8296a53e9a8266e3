"""Seeded generators for small algorithmic sequence tasks.

Every generator takes an explicit ``torch.Generator`` and returns ``(inputs, targets)``, both
long tensors of shape (B, T); ``targets`` is -100 where nothing is scored, so that
``F.cross_entropy(..., ignore_index=-100)`` and :func:`query_accuracy` read only the scored
positions.

* :func:`mqar_batch`: multi-query associative recall (key-value pairs, then queries);
* :func:`periodic_copy_batch`: a noisy repeating motif, a tiny synthetic language whose loss
  can be measured at any length.

Explained in: notebooks/part2_softmax/14_attention_as_dynamical_system.py (MQAR) and
notebooks/part2_softmax/10_softplus_attention.py (periodic copy). Cite: arora2023zoology.
"""

from __future__ import annotations

import torch

from noisefit_lib.noisefit.losses import IGNORE_INDEX

IGNORE = IGNORE_INDEX
"""Targets that are not scored: the library's one ignore index, -100 (``losses.IGNORE_INDEX``)."""


def _choose(batch_size: int, population: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Draw k distinct integers in [0, population) per row, in random order: shape (B, k)."""
    if k > population:
        raise ValueError(f"cannot choose {k} distinct items out of {population}")
    return torch.rand(batch_size, population, generator=generator).argsort(dim=1)[:, :k]


def mqar_batch(
    batch_size: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall sequences.

    Layout: ``k_1 v_1 k_2 v_2 ... k_K v_K`` then, in the rest of the sequence (filled with token
    0), every key is queried once, in random order and at random even offsets, followed by its
    value: ``... k_j v_j ...``. The target at the query's position is ``v_j`` (the next token);
    all other targets are ignored. Keys come from ``[1, vocab/2)`` and values from
    ``[vocab/2, vocab)``, drawn without replacement within a sequence.

    Args:
        batch_size: B.
        seq_len: T; must leave room for the pairs and the queries, T >= 4 K.
        num_kv_pairs: K.
        vocab_size: V; needs V/2 - 1 >= K keys and V/2 >= K values.
        generator: the random stream.

    Returns:
        inputs (B, T) and targets (B, T) with exactly K scored positions per row.
    """
    k = num_kv_pairs
    if seq_len < 4 * k:
        raise ValueError(f"seq_len {seq_len} < 4 * num_kv_pairs {4 * k}")
    half = vocab_size // 2
    keys = _choose(batch_size, half - 1, k, generator) + 1  # (B, K) in [1, half)
    values = _choose(batch_size, vocab_size - half, k, generator) + half  # (B, K)
    inputs = torch.zeros(batch_size, seq_len, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
    inputs[:, 0 : 2 * k : 2], inputs[:, 1 : 2 * k : 2] = keys, values
    slots = _choose(batch_size, (seq_len - 2 * k) // 2, k, generator)  # query slots
    pos = 2 * k + 2 * slots  # (B, K) even offsets after the context
    order = _choose(batch_size, k, k, generator)  # which pair each query asks for
    rows = torch.arange(batch_size)[:, None]
    inputs[rows, pos] = keys.gather(1, order)
    inputs[rows, pos + 1] = values.gather(1, order)
    targets[rows, pos] = values.gather(1, order)
    return inputs, targets


def periodic_copy_batch(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    period: int,
    noise: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random motif of length ``period`` repeated to ``seq_len``, with token noise.

    Each position is replaced by a uniform random token with probability ``noise``. The task is
    language modelling: targets are the inputs shifted by one (the last target is ignored). Once
    a motif has been seen, the next token is predictable from the tokens ``period``,
    ``2 period``, ... positions back, so the loss measures how well the model finds and averages
    those positions, at any length.

    Args:
        batch_size: B.
        seq_len: T.
        vocab_size: V.
        period: motif length.
        noise: replacement probability in [0, 1).
        generator: the random stream.

    Returns:
        inputs (B, T) and next-token targets (B, T).
    """
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    motif = torch.randint(0, vocab_size, (batch_size, period), generator=generator)
    tokens = motif.repeat(1, seq_len // period + 1)[:, : seq_len + 1]
    flip = torch.rand(tokens.shape, generator=generator) < noise
    random_tokens = torch.randint(0, vocab_size, tokens.shape, generator=generator)
    tokens = torch.where(flip, random_tokens, tokens)
    targets = tokens[:, 1:].clone()
    return tokens[:, :-1].contiguous(), targets


def query_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (targets != -100) whose arg-max logit is the target."""
    scored = targets != IGNORE
    if not scored.any():
        raise ValueError("no scored positions")
    return (logits.argmax(dim=-1)[scored] == targets[scored]).float().mean().item()
