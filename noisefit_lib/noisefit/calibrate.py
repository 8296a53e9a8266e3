"""v2's automatic layer and noise-scale calibration (the official ``select_layers`` of v2).

For each layer l and candidate scale ``c_j = factor_j / sqrt(H)`` one probe forward adds
adaptive noise (``base_std = c_j``, i.e. relative to each token's MAD) at layer l only and
records the symmetric KL between clean and noisy next-token distributions and the CE increase.
Layers whose best penalised score passes ``median + MAD`` are kept (at most ``ceil(sqrt(L))``,
spread over depth bands) and each gets the smallest valid scale reaching a target KL.

Explained in: notebooks/part1_noisefit/02_where_to_inject_noise.py and book/noisefit_library.md
(Layer selection). Source: the official v2 code, github.com/akhadangi/NoiseFiT (``NoiseFiT.py``,
``select_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from noisefit_lib.noisefit.inject import find_decoder_layers
from noisefit_lib.noisefit.layers import LayerChoice, probe_injector
from noisefit_lib.noisefit.losses import causal_ce, symmetric_kl


def depth_diverse(
    scores: torch.Tensor, candidates: list[int], max_layers: int, bands: int = 3
) -> list[int]:
    """v2's depth-aware pick: best candidates per depth band, then the global best.

    Args:
        scores: per-layer score, shape (L,).
        candidates: indices that passed the threshold.
        max_layers: how many to keep at most.
        bands: number of equal depth bands.

    Returns:
        Sorted indices (the single best layer when there is no candidate).
    """
    n = scores.numel()
    if not candidates:
        return [int(torch.argmax(scores))]
    bands = max(1, min(bands, n))
    quota = max(1, math.ceil(max_layers / bands))
    chosen: list[int] = []
    for b in range(bands):
        lo, hi = math.floor(b * n / bands), math.floor((b + 1) * n / bands)
        in_band = [i for i in candidates if lo <= i < hi]
        in_band.sort(key=lambda i: -float(scores[i]))
        chosen.extend(in_band[:quota])
    for i in sorted(candidates, key=lambda i: -float(scores[i])):
        if len(chosen) >= max_layers:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen[:max_layers])


@torch.no_grad()
def calibrate_auto(
    model: nn.Module,
    batches: Sequence[Mapping[str, Any]],
    *,
    factors: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0),
    max_ce_delta_ratio: float = 0.02,
    scale_l2_penalty: float = 0.05,
    target_kl_fraction: float = 0.75,
    bands: int = 3,
    min_layer: int = 0,
    generator: torch.Generator | None = None,
) -> LayerChoice:
    """Run v2's calibration on ``batches`` (``input_ids``, ``attention_mask``, ``labels``).

    Args:
        model: the causal LM (put in eval mode during calibration, restored after).
        batches: calibration batches (v2 uses the first 2 training batches).
        factors: candidate scales as multiples of ``1/sqrt(H)``, increasing.
        max_ce_delta_ratio: a scale is invalid if ``dCE / CE`` exceeds this.
        scale_l2_penalty: score penalty ``1 + p * log2(factor)^2``.
        target_kl_fraction: target KL = this times the median best-valid KL of the chosen layers.
        bands: depth bands for diversity.
        min_layer: only layers >= this are candidates (v2's prefix-sharing restriction).
        generator: probe noise source.

    Returns:
        :class:`LayerChoice` whose ``sigmas`` are the per-layer ``base_std`` for
        :class:`~noisefit_lib.noisefit.noise.AdaptiveNoise` with ``reference="mad"``.

    Raises:
        ValueError: with no batch.
    """
    if not batches:
        raise ValueError("auto calibration needs at least one batch")
    blocks = find_decoder_layers(model)
    n = len(blocks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kl = torch.zeros(n, len(factors))
    dce = torch.zeros(n, len(factors))
    clean_ce = 0.0
    base = 1.0 / math.sqrt(_hidden_size(model))
    try:
        for batch in batches:
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}
            labels = batch["labels"].to(device)
            clean = model(**inputs).logits
            ce0 = causal_ce(clean, labels)
            clean_ce += float(ce0)
            for layer in range(n):
                for j, f in enumerate(factors):
                    with probe_injector(model, layer, f * base) as inj:
                        inj.generator = generator
                        with inj.active(token_mask=inputs.get("attention_mask")):
                            noisy = model(**inputs).logits
                    kl[layer, j] += float(symmetric_kl(clean, noisy, labels))
                    dce[layer, j] += max(0.0, float(causal_ce(noisy, labels) - ce0))
    finally:
        model.train(was_training)
    nb = len(batches)
    kl, dce, ce_ref = kl / nb, dce / nb, max(abs(clean_ce / nb), 1e-8)
    ratio = dce / ce_ref
    f_t = torch.tensor(list(factors), dtype=torch.float32)
    raw = kl / (1 + ratio) / (1 + scale_l2_penalty * torch.log2(f_t).abs() ** 2).unsqueeze(0)
    valid = ratio <= max_ce_delta_ratio
    score = torch.where(valid, raw, torch.full_like(raw, -math.inf))
    none_valid = torch.isinf(score).all(dim=1)
    score[none_valid] = raw[none_valid]
    best = score.max(dim=1).values
    med = best.median()
    thr = med + (best - med).abs().median().clamp_min(1e-12)
    cand = [i for i in range(n) if best[i] >= thr and best[i] > 0 and i >= min_layer]
    max_layers = max(1, math.ceil(math.sqrt(n)))
    chosen = depth_diverse(best, cand, max_layers, bands)
    best_pos = torch.argmax(score, dim=1)
    best_kl = kl[torch.arange(n), best_pos]
    target = float((best_kl[chosen].median() * target_kl_fraction).clamp_min(1e-12))
    sigmas: dict[int, float] = {}
    for i in chosen:
        ok = [j for j in range(len(factors)) if bool(valid[i, j]) and float(kl[i, j]) >= target]
        if ok:
            pos = ok[0]
        else:
            ok = [j for j in range(len(factors)) if bool(valid[i, j])]
            if ok:
                dist = [abs(math.log(max(float(kl[i, j]), 1e-12)) - math.log(target)) for j in ok]
                pos = ok[dist.index(min(dist))]
            else:
                pos = int(best_pos[i])
        sigmas[i] = factors[pos] * base
    report = {
        "kl": kl.tolist(),
        "ce_delta": dce.tolist(),
        "clean_ce": clean_ce / nb,
        "layer_score": best.tolist(),
        "threshold": float(thr),
        "candidates": cand,
        "target_kl": target,
        "factors": list(factors),
    }
    return LayerChoice(chosen, best.tolist(), sigmas, report)


def _hidden_size(model: nn.Module) -> int:
    """Width H of the residual stream (the input embedding size)."""
    return int(model.get_input_embeddings().weight.shape[-1])
