"""Post-training quantization: uniform symmetric quantizers and NoisyQuant's searches.

* :func:`quantize_activation`: per-tensor symmetric uniform quantization with a given step,
  levels ``-2^(b-1) .. 2^(b-1) - 1``;
* :func:`quantize_weight`: per-output-channel symmetric quantization of a weight matrix, each
  row's step set by its largest magnitude;
* :func:`search_clip`: the activation step (clipping value / level count) minimising a linear
  layer's output error on calibration inputs, over a grid of clipping values below the maximum;
* :func:`search_noisy_bias`: NoisyQuant's fixed noisy bias, a per-channel vector ``b`` such that
  the layer computes ``W (Q(x + b) - b)``: a scalar mean, then the scale of a given noise vector,
  each chosen by the layer's output error on calibration inputs.

They follow ``fast_quant.py`` of ``kriskrisliu/NoisyQuant`` (tested against its outputs in
``tests/test_noisyquant_reference.py``); where the official code draws its noise vector itself
(a Gaussian, ``(2 z - 1) * step``), these functions take the vector as an argument.

Explained in: notebooks/part4_robustness/26_noisyquant.py (cite: liu2023noisyquant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _levels(bits: int) -> int:
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_activation(x: torch.Tensor, bits: int, step: float | torch.Tensor) -> torch.Tensor:
    """``step * clamp(round(x / step), -2^(b-1), 2^(b-1) - 1)``: per-tensor, symmetric."""
    n = _levels(bits)
    return (x / step).round().clamp(-n - 1, n) * step


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric quantization of ``weight`` (out, in): row step max|w| / n."""
    n = _levels(bits)
    step = weight.abs().amax(dim=1, keepdim=True) / n
    return (weight / step).round().clamp(-n - 1, n) * step


def _output_error(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reference: torch.Tensor
) -> torch.Tensor:
    return ((F.linear(x, weight, bias) - reference) ** 2).mean()


def search_clip(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    candidates: int = 1000,
) -> torch.Tensor:
    """The activation step of the clipping value that minimises the layer's output error.

    Clipping values ``max|x| * i / candidates`` for ``i = candidates, ..., 1``; the error is the
    mean squared difference between ``linear(Q(clip(x)), weight, bias)`` and the layer's output
    on the raw ``x`` with the same ``weight``. The first of equal errors is kept.
    """
    if candidates < 1:
        raise ValueError(f"need at least one candidate, got {candidates}")
    reference = F.linear(x, weight, bias)
    absmax = x.abs().max()
    best_error, best_step = None, None
    for i in range(candidates, 0, -1):
        clip = absmax / candidates * i
        step = clip / _levels(bits)
        error = _output_error(
            quantize_activation(x.clamp(-clip, clip), bits, step), weight, bias, reference
        )
        if best_error is None or error < best_error:
            best_error, best_step = error, step
    return best_step


def search_noisy_bias(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    step: float | torch.Tensor,
    noise: torch.Tensor,
    *,
    mean_candidates: int = 200,
    range_candidates: int = 1000,
    search_mean: bool = True,
    search_range: bool = True,
) -> tuple[torch.Tensor, float]:
    """NoisyQuant's bias: a mean ``m``, then ``b = m + s * noise`` with a searched scale ``s``.

    The mean runs over ``step * i / mean_candidates`` for ``i`` in ``[-mean_candidates,
    mean_candidates)``; then ``s`` over ``i / range_candidates`` for ``i`` in ``[0, 2 *
    range_candidates)`` (``s = 0`` keeps the mean alone). Each is chosen by the mean squared
    error between ``linear(Q(x + b) - b, weight, bias)`` and ``linear(x, weight, bias)``, the
    first of equal errors kept. ``noise`` broadcasts against ``x`` (one value per input channel).
    ``search_mean=False`` fixes the mean at 0 and ``search_range=False`` the scale at 0 (the
    official ``search_mean`` and ``search_noisy`` switches).

    Returns:
        the bias ``b`` (shaped like ``noise``) and the chosen scale ``s``.
    """
    if mean_candidates < 1 or range_candidates < 1:
        raise ValueError(f"need candidates >= 1: {mean_candidates, range_candidates}")
    reference = F.linear(x, weight, bias)

    def error(candidate: torch.Tensor) -> torch.Tensor:
        shifted = quantize_activation(x + candidate, bits, step) - candidate
        return _output_error(shifted, weight, bias, reference)

    best_error, best_mean = None, torch.zeros(())
    for i in range(-mean_candidates, mean_candidates) if search_mean else ():
        candidate = torch.as_tensor(step * i / mean_candidates)
        current = error(candidate)
        if best_error is None or current < best_error:
            best_error, best_mean = current, candidate
    best_error, best_bias, best_scale = None, torch.zeros_like(noise) + best_mean, 0.0
    for i in range(2 * range_candidates) if search_range else ():
        candidate = best_mean + noise * (i / range_candidates)
        current = error(candidate)
        if best_error is None or current < best_error:
            best_error, best_bias, best_scale = current, candidate, i / range_candidates
    return best_bias, best_scale
