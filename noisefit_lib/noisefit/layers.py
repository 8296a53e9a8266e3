"""Which decoder layers get noise: v1's SNR and its variants, Spectrum, random, all, v2 auto.

**What v1's "SNR" measures.** v1 adds noise of std ``s = sigma * std(h) * MAD * w * f`` to each
stored layer output and divides ``mean|h|`` by ``mean|s * eps|``. Since every factor of ``s``
except ``w, f`` scales with ``h``, ``SNR ~ mean|h| / (sqrt(2/pi) * sigma * std(h) * mean(MAD w f))
~ 1 / (sigma * scale(h))``: it is the inverse hidden-state scale, not a robustness measure.
"Largest" therefore picks the layers with the *smallest* activations (usually early layers
of a pre-LN model) and "Lowest" the largest (deep) ones. :func:`snr_closed_form` computes it
without Monte Carlo, and :func:`hidden_scale` ranks by the scale directly.

Explained in: notebooks/part1_noisefit/02_where_to_inject_noise.py and book/noisefit_library.md
(Layer selection). Source: Khadangi et al. 2025, arXiv:2504.03302 (SNR layer choice); the
official code, github.com/akhadangi/NoiseFiT (``NoiseFiT_v1_manual_snr.py``); Spectrum's SNR,
Hartford et al. 2024, arXiv:2406.06623 (``spectrum.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from noisefit_lib.noisefit.inject import NoiseInjector, _split_output, find_decoder_layers
from noisefit_lib.noisefit.noise import adaptive_noise, adaptive_scale

SNRFormat = Literal["Largest", "Lowest"]
SNR_FORMATS: tuple[str, ...] = ("Largest", "Lowest")
METHODS: tuple[str, ...] = ("snr", "snr_propagated", "scale", "spectrum", "random", "all", "auto")


def _check_format(snr_format: str) -> bool:
    if snr_format not in SNR_FORMATS:
        raise ValueError(f"unknown snr_format {snr_format!r}; choose {', '.join(SNR_FORMATS)}")
    return snr_format == "Largest"


def _model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    keep = ("input_ids", "attention_mask")
    return {k: batch[k].to(device) for k in keep if k in batch}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def layer_outputs(
    model: nn.Module, batch: Mapping[str, Any], *, post_norm_last: bool = False
) -> list[torch.Tensor]:
    """Clean outputs of every decoder block for one batch, in eval mode and without gradient.

    Args:
        model: the causal LM.
        batch: dict with ``input_ids`` and optionally ``attention_mask``.
        post_norm_last: return ``output_hidden_states[1:]`` as v1 does, whose last entry is
            taken *after* the final norm; the default captures each block's raw output.

    Returns:
        One (B, T, H) tensor per block.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = _model_inputs(batch, _device(model))
        if post_norm_last:
            out = model(**inputs, output_hidden_states=True)
            return [h.detach() for h in out.hidden_states[1:]]
        blocks = find_decoder_layers(model)
        captured: list[torch.Tensor | None] = [None] * len(blocks)

        def make(i: int):
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                captured[i] = _split_output(output)[0].detach()

            return hook

        handles = [b.register_forward_hook(make(i)) for i, b in enumerate(blocks)]
        try:
            model(**inputs)
        finally:
            for h in handles:
                h.remove()
        return [c for c in captured if c is not None]
    finally:
        model.train(was_training)


def _sel(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The real-token rows of ``x`` (all of it when ``mask`` is None)."""
    return x if mask is None else x[mask]


def snr_v1(
    hidden: Sequence[torch.Tensor],
    sigma: float,
    *,
    generator: torch.Generator | None = None,
    passes: int = 10,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """v1's SNR per layer: ``mean|h| / (mean over passes of mean|h~ - h| + 1e-6)``.

    Noise is added directly to each stored hidden state with ``base_std = sigma * std(h)``
    (sigma once, unlike v1's training hook); nothing is propagated.

    Args:
        hidden: one (B, T, H) tensor per layer (:func:`layer_outputs`).
        sigma: ``noise_std``.
        generator: noise source.
        passes: Monte-Carlo passes (10 in v1).
        mask: (B, T) real-token mask; ``None`` (v1) averages over padding too.

    Returns:
        Tensor of shape (L,).
    """
    m = [None if mask is None else mask.to(h.device).bool() for h in hidden]
    signal = torch.stack([_sel(h, mi).abs().mean() for h, mi in zip(hidden, m, strict=True)])
    diff = torch.zeros(passes, len(hidden), device=signal.device, dtype=signal.dtype)
    for p in range(passes):  # passes outside, layers inside: v1's order of random draws
        for i, h in enumerate(hidden):
            base = sigma * _sel(h, m[i]).std().item()
            noisy, _ = adaptive_noise(h, base, generator=generator, mask=m[i])
            diff[p, i] = _sel(noisy - h, m[i]).abs().mean()
    return signal / (diff.mean(dim=0) + 1e-6)


def snr_closed_form(
    hidden: Sequence[torch.Tensor], sigma: float, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The value :func:`snr_v1` estimates: ``mean|h| / (sqrt(2/pi) * mean(s))``, no sampling."""
    out = []
    for h in hidden:
        m = None if mask is None else mask.to(h.device).bool()
        s = adaptive_scale(h, sigma * _sel(h, m).std().item(), mask=m)
        out.append(_sel(h, m).abs().mean() / (math.sqrt(2 / math.pi) * _sel(s, m).mean() + 1e-6))
    return torch.stack(out)


def hidden_scale(
    hidden: Sequence[torch.Tensor], *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Global std of each layer output (over real tokens when ``mask`` is given), shape (L,)."""
    m = None if mask is None else mask.bool()
    return torch.stack([(h if m is None else h[m.to(h.device)]).float().std() for h in hidden])


@torch.no_grad()
def snr_propagated(
    model: nn.Module,
    batch: Mapping[str, Any],
    sigma: float,
    *,
    generator: torch.Generator | None = None,
    passes: int = 10,
) -> torch.Tensor:
    """The first v1 commit's SNR: noise on the input embeddings, propagated through the net.

    ``N_l = mean|h_l(noisy embeddings) - h_l(clean)|`` with embedding noise
    ``base_std = sigma^2 * std(emb)``; ``SNR_l = mean|h_l| / (N_l + 1e-6)``.

    Returns:
        Tensor of shape (L,).
    """
    was_training = model.training
    model.eval()
    try:
        inputs = _model_inputs(batch, _device(model))
        clean = model(**inputs, output_hidden_states=True).hidden_states[1:]
        emb = model.get_input_embeddings()(inputs["input_ids"])
        diff = torch.zeros(len(clean), device=emb.device)
        for _ in range(passes):
            noisy_emb, _ = adaptive_noise(
                emb, sigma * emb.std().item() * sigma, generator=generator
            )
            rest = {k: v for k, v in inputs.items() if k != "input_ids"}
            noisy = model(inputs_embeds=noisy_emb, **rest, output_hidden_states=True).hidden_states[
                1:
            ]
            diff += torch.stack([(a - b).abs().mean() for a, b in zip(noisy, clean, strict=True)])
        signal = torch.stack([h.abs().mean() for h in clean])
        return signal / (diff / passes + 1e-6)
    finally:
        model.train(was_training)


def weight_snr(weight: torch.Tensor) -> float:
    """Spectrum's SNR of one weight matrix (Hartford et al. 2024, ``spectrum.py``).

    ``sigma = IQR(S) / 1.349``, threshold ``sigma * (1 + sqrt(beta))`` with
    ``beta = min(n, m) / max(n, m)``; SNR = (sum of S above) / (sum at or below, or 1),
    divided by the largest singular value.
    """
    w = weight.detach().float()
    if w.dim() < 2:
        w = w.unsqueeze(0)
    s = torch.linalg.svdvals(w)
    sig = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    n, m = w.shape[-2:]
    thr = sig * (1 + math.sqrt(min(n, m) / max(n, m)))
    above = s > thr
    signal = s[above].sum() if above.any() else s.new_zeros(())
    noise = s[~above].sum() if (~above).any() else s.new_ones(())
    return float(signal / noise / s[0])


def spectrum_snr(model: nn.Module) -> torch.Tensor:
    """Block-mean Spectrum weight SNR of every decoder block's 2-D weights, shape (L,).

    LoRA factors (``lora_`` in the name) are skipped; data is not needed.
    """
    scores = []
    for block in find_decoder_layers(model):
        vals = [
            weight_snr(p)
            for name, p in block.named_parameters()
            if p.dim() == 2 and "lora_" not in name and min(p.shape) > 1
        ]
        scores.append(sum(vals) / max(len(vals), 1))
    return torch.tensor(scores)


def top_k(scores: torch.Tensor, k: int, snr_format: str = "Largest") -> list[int]:
    """Indices of the k highest (``"Largest"``) or lowest (``"Lowest"``) scores, sorted.

    Raises:
        ValueError: for an unknown ``snr_format`` or k outside 1..L.
    """
    largest = _check_format(snr_format)
    if not 1 <= k <= scores.numel():
        raise ValueError(f"num_noise_layers must be in 1..{scores.numel()}, got {k}")
    return sorted(int(i) for i in torch.topk(scores.float(), k, largest=largest).indices)


def random_layers(n_layers: int, k: int, *, generator: torch.Generator) -> list[int]:
    """K distinct layer indices drawn uniformly with ``generator``, sorted."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"num_noise_layers must be in 1..{n_layers}, got {k}")
    return sorted(int(i) for i in torch.randperm(n_layers, generator=generator)[:k])


@dataclass
class LayerChoice:
    """Result of a layer selection.

    Attributes:
        layers: chosen block indices, sorted.
        scores: per-layer scores used (empty for random/all).
        sigmas: per-layer noise levels (v2 auto calibration only).
        report: diagnostics (JSON-serialisable).
    """

    layers: list[int]
    scores: list[float] = field(default_factory=list)
    sigmas: dict[int, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def choose_layers(
    model: nn.Module,
    method: str,
    *,
    batch: Mapping[str, Any] | None = None,
    k: int = 3,
    snr_format: str = "Largest",
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    faithful: bool = False,
    calibration_batches: Sequence[Mapping[str, Any]] = (),
) -> LayerChoice:
    """Select noisy layers with one of :data:`METHODS`.

    Args:
        model: the causal LM.
        method: ``snr`` (v1), ``snr_propagated`` (first v1 commit), ``scale`` (std of the
            outputs; "Largest" picks the *smallest* scale, mirroring v1's SNR), ``spectrum``
            (weight SNR), ``random``, ``all`` or ``auto`` (v2 calibration).
        batch: one batch (``input_ids``, ``attention_mask``, ``labels``) for data-based methods.
        k: ``num_noise_layers``.
        snr_format: ``"Largest"`` or ``"Lowest"``.
        sigma: ``noise_std`` used by the SNR estimators.
        generator: randomness for SNR noise and ``random`` (a fresh seed-0 CPU one if None).
        faithful: v1 details: post-norm last hidden state and padding in the statistics.
        calibration_batches: batches for ``auto`` (v2 uses 2).

    Returns:
        :class:`LayerChoice`.

    Raises:
        ValueError: for an unknown method or format, or a missing batch.
    """
    if method not in METHODS:
        raise ValueError(f"unknown layer selection {method!r}; choose {', '.join(METHODS)}")
    _check_format(snr_format)
    n = len(find_decoder_layers(model))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if method == "all":
        return LayerChoice(list(range(n)))
    if method == "random":
        return LayerChoice(random_layers(n, k, generator=gen))
    if method == "spectrum":
        scores = spectrum_snr(model)
        return LayerChoice(top_k(scores, k, snr_format), scores.tolist())
    if method == "auto":
        from noisefit_lib.noisefit.calibrate import calibrate_auto

        batches = list(calibration_batches) or ([batch] if batch is not None else [])
        return calibrate_auto(model, batches, generator=_gen_on(gen, _device(model)))
    if batch is None:
        raise ValueError(f"layer selection {method!r} needs a batch")
    if method == "snr_propagated":
        dev_gen = _gen_on(gen, _device(model))
        scores = snr_propagated(model, batch, sigma, generator=dev_gen)
        return LayerChoice(top_k(scores, k, snr_format), scores.tolist())
    hidden = layer_outputs(model, batch, post_norm_last=faithful)
    mask = None if faithful or "attention_mask" not in batch else batch["attention_mask"]
    if method == "scale":
        scores = -hidden_scale(hidden, mask=mask)
    else:
        scores = snr_v1(hidden, sigma, generator=_gen_on(gen, hidden[0].device), mask=mask)
    return LayerChoice(top_k(scores, k, snr_format), scores.tolist())


def _gen_on(gen: torch.Generator, device: torch.device) -> torch.Generator:
    if gen.device.type == device.type:
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def probe_injector(model: nn.Module, layer: int, sigma: float) -> NoiseInjector:
    """A :class:`NoiseInjector` that fires in eval mode, for calibration probes."""
    from noisefit_lib.noisefit.noise import AdaptiveNoise

    return NoiseInjector(model, [layer], AdaptiveNoise(sigma, reference="mad"), train_only=False)
