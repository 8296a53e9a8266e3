"""Pack NoiseFiT's clean and noisy passes into one batch, optionally sharing the prefix.

NoiseFiT's ``full`` loss needs a clean pass and two noisy passes of the same batch. Instead of
three forwards, :func:`repeat_batch` stacks ``[x; x; x]`` (3B rows) so one forward does all
three, noise going only to rows ``B:``. With :func:`shared_prefix`, the blocks below the first
noisy layer run once on B rows and the batch is tripled only at that layer: those blocks are
identical in all three copies, so this changes no value, only the cost.

Explained in: book/noisefit_library.md (Cost); the cost it saves is measured in
notebooks/part1_noisefit/05_noisefit_end_to_end.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


def repeat_batch(inputs: Mapping[str, Any], copies: int) -> dict[str, Any]:
    """Stack ``copies`` copies of every batch-shaped tensor along dim 0 (labels dropped).

    Args:
        inputs: model inputs, tensors of shape (B, ...).
        copies: how many copies.

    Returns:
        A new dict of inputs of shape (copies * B, ...), without ``labels``.
    """
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == "labels":
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[key] = value.repeat(copies, *([1] * (value.dim() - 1)))
        else:
            out[key] = value
    return out


def _expand(value: Any, batch: int, copies: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_expand(v, batch, copies) for v in value)
    if isinstance(value, list):
        return [_expand(v, batch, copies) for v in value]
    return value


@contextlib.contextmanager
def shared_prefix(blocks: nn.ModuleList, first: int, copies: int = 3) -> Iterator[None]:
    """Inside the block, forwards run blocks ``< first`` once and the rest on ``copies`` copies.

    A pre-hook on block ``first`` repeats its input hidden states ``copies`` times along the
    batch; pre-hooks on every later block repeat the batch-shaped keyword tensors (attention
    mask, position embeddings) to match. The logits come out with ``copies * B`` rows.

    Args:
        blocks: the decoder blocks (:func:`~noisefit_lib.noisefit.inject.find_decoder_layers`).
        first: index of the first block that must see the copies (the first noisy layer).
        copies: number of copies (3 for clean + two noisy passes).

    Yields:
        Nothing; the hooks are removed on exit.

    Raises:
        ValueError: when ``first`` is out of range.
    """
    if not 0 <= first < len(blocks):
        raise ValueError(f"first={first} out of range; the model has layers 0..{len(blocks) - 1}")
    state: dict[str, int] = {}

    def first_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            h = args[0]
            state["batch"] = h.shape[0]
            args = (h.repeat(copies, 1, 1), *args[1:])
        else:
            h = kwargs["hidden_states"]
            state["batch"] = h.shape[0]
            kwargs = {**kwargs, "hidden_states": h.repeat(copies, 1, 1)}
        b = state["batch"]
        args = (args[0], *(_expand(a, b, copies) for a in args[1:]))
        kwargs = {
            k: (v if k == "hidden_states" else _expand(v, b, copies)) for k, v in kwargs.items()
        }
        return args, kwargs

    def later_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        b = state["batch"]
        args = (args[0], *(_expand(a, b, copies) for a in args[1:])) if args else args
        kwargs = {
            k: (v if k == "hidden_states" else _expand(v, b, copies)) for k, v in kwargs.items()
        }
        return args, kwargs

    handles = [blocks[first].register_forward_pre_hook(first_hook, with_kwargs=True)]
    for j in range(first + 1, len(blocks)):
        handles.append(blocks[j].register_forward_pre_hook(later_hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
