"""NoiseFiT's adaptive Gaussian noise and NEFTune's embedding noise, as pure functions.

Everything here is a function of its arguments: randomness comes from an explicit
`torch.Generator` (or a pre-drawn `noise` tensor), never from hidden state.

Explained in: notebooks/part1_noisefit/03_adaptive_noise.py and book/noisefit_library.md
(Adaptive noise). Source: Khadangi et al. 2025, arXiv:2504.03302 (the adaptive noise); the
official code, github.com/akhadangi/NoiseFiT (``NoiseFiT_v1_manual_snr.py``, ``NoiseFiT.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

EPS = 1e-6
"""The official code's epsilon (MAD floor factor and denominators)."""
BETA = 0.1
"""Sensitivity of the exponential outlier weight w."""
F_MAX = 5.0
"""Cap of the token variance factor f."""

Reference = Literal["mad", "global_std", "v1"]
REFERENCES: tuple[str, ...] = ("mad", "global_std", "v1")


def _check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"unknown noise reference {reference!r}; choose {', '.join(REFERENCES)}")


def adaptive_scale(
    h: torch.Tensor,
    base_std: float | torch.Tensor,
    *,
    beta: float = BETA,
    f_max: float = F_MAX,
    eps: float = EPS,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-element standard deviation s of NoiseFiT's adaptive noise.

    For each token (b, t), over its features i: ``f = min(f_max, exp(var_i / mean_bt var))``,
    ``m = median_i h``, ``MAD = max(median_i |h - m|, eps * ||h||)``,
    ``w = exp(-beta |h - m| / (MAD + eps))`` and ``s = base_std * MAD * w * f``.
    ``torch.median`` takes the lower middle value for an even count, as in the official code.

    Args:
        h: hidden states, shape (B, T, H) (any leading shape works).
        base_std: scalar, or a tensor broadcastable to (B, T, 1).
        beta: weight sensitivity.
        f_max: cap of the variance factor.
        eps: MAD floor factor and denominator guard.
        mask: optional (B, T) bool/0-1 mask of real tokens. When given, the mean variance is
            taken over real tokens only and s is 0 on padding. ``None`` reproduces v1, whose
            statistics include padding.

    Returns:
        s, the same shape and dtype as ``h``. It carries gradient from ``h`` (detach it for v2).
    """
    if torch.is_grad_enabled() and h.requires_grad:
        var = h.var(dim=-1, keepdim=True)
    else:  # same value (unbiased), several times faster than torch.var on CPU
        var = torch.sub(h, h.mean(dim=-1, keepdim=True)).square_().sum(-1, keepdim=True)
        var = var / max(h.shape[-1] - 1, 1)
    if mask is None:
        mean_var = var.mean()
    else:
        m = mask.to(var.dtype).unsqueeze(-1)
        mean_var = (var * m).sum() / m.sum().clamp_min(1.0)
    factor = torch.clamp(torch.exp(var / (mean_var + eps)), max=f_max)
    median = h.median(dim=-1, keepdim=True).values
    if torch.is_grad_enabled() and h.requires_grad:
        dev = (h - median).abs()
        mad = dev.median(dim=-1, keepdim=True).values
        mad = mad.clamp(min=eps * h.norm(dim=-1, keepdim=True))
        weight = torch.exp(-beta * dev / (mad + eps))
        s = base_std * mad * weight * factor
    else:  # the same arithmetic in place, one (B, T, H) buffer (the detached default path)
        s = torch.sub(h, median).abs_()
        mad = s.median(dim=-1, keepdim=True).values
        mad = mad.clamp(min=eps * h.norm(dim=-1, keepdim=True))
        s.div_(mad + eps).mul_(-beta).exp_().mul_(base_std * mad * factor)
    if mask is not None:
        s = s * mask.to(s.dtype).unsqueeze(-1)
    return s


def draw_normal(h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``h`` from ``generator`` (global RNG when None)."""
    return torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)


def adaptive_noise(
    h: torch.Tensor,
    base_std: float | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    beta: float = BETA,
    f_max: float = F_MAX,
    eps: float = EPS,
    mask: torch.Tensor | None = None,
    detach_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add NoiseFiT's adaptive Gaussian noise: ``h + s * eps`` with ``eps ~ N(0, I)``.

    The moments this guarantees (tested in tests/test_noisefit_noise.py):
    ``E[h~ | h] = h`` and ``Cov[h~ | h] = diag(s^2)``, so ``Var[h~] = Var[h] + E[s^2]``.

    Args:
        h: hidden states, shape (B, T, H).
        base_std: scalar or tensor broadcastable to (B, T, 1); see :func:`base_std_for`.
        generator: source of ``eps``; ``None`` uses torch's global RNG.
        noise: a pre-drawn ``eps`` shaped like ``h`` (overrides ``generator``; used for
            antithetic or common-random-number experiments).
        beta: weight sensitivity.
        f_max: cap of the variance factor.
        eps: MAD floor factor.
        mask: (B, T) mask of real tokens, or ``None`` (v1: padding included).
        detach_scale: stop gradients through ``s`` (v2 and our default); v1 keeps them.

    Returns:
        ``(noisy, s)``: the noisy tensor and the per-element noise std, both shaped like ``h``.
    """
    if detach_scale:
        with torch.no_grad():  # no autograd bookkeeping for a scale that carries no gradient
            s = adaptive_scale(h.detach(), base_std, beta=beta, f_max=f_max, eps=eps, mask=mask)
    else:
        s = adaptive_scale(h, base_std, beta=beta, f_max=f_max, eps=eps, mask=mask)
    e = draw_normal(h, generator) if noise is None else noise
    return torch.addcmul(h, s, e), s


def base_std_for(
    h: torch.Tensor,
    sigma: float,
    reference: Reference,
    mask: torch.Tensor | None = None,
) -> float:
    """The ``base_std`` of :func:`adaptive_noise` for a noise level ``sigma``.

    Args:
        h: the layer output, shape (B, T, H).
        sigma: the user's noise level (``--noise_std``).
        reference: ``"v1"``: ``sigma * std(h) * sigma`` (the official training hook: sigma
            twice, std over every element including padding); ``"global_std"``:
            ``sigma * std(h)`` over real tokens (v1's SNR estimator, sigma once);
            ``"mad"``: ``sigma`` itself, so the noise is ``sigma * MAD * w * f`` and its size
            relative to ``h`` does not depend on the scale of ``h`` (as in v2).
        mask: (B, T) mask of real tokens, used by ``"global_std"``.

    Returns:
        A Python float (no gradient flows through it, as in the official ``.item()``).

    Raises:
        ValueError: for an unknown ``reference``.
    """
    _check_reference(reference)
    if reference == "mad":
        return float(sigma)
    if reference == "v1":
        return float(sigma * h.std().item() * sigma)
    with torch.no_grad():
        if mask is None:
            std = h.std()
        else:
            std = h[mask.bool()].std()
    return float(sigma * std.item())


@dataclass(frozen=True)
class AdaptiveNoise:
    """A noise function for :class:`~noisefit_lib.noisefit.inject.NoiseInjector`.

    Call it as ``fn(h, layer, token_mask, generator) -> (noisy, s)``.

    Attributes:
        sigma: noise level; see :func:`base_std_for`.
        reference: ``"mad"`` (default), ``"global_std"`` or ``"v1"``.
        layer_sigma: optional per-layer sigma (v2 calibration) overriding ``sigma``.
        detach: stop gradients through ``s`` (True in the default, False in faithful v1).
        mask_padding: exclude padding from the statistics and give it no noise.
        beta: weight sensitivity.
        f_max: cap of the variance factor.
        eps: MAD floor factor.
    """

    sigma: float = 0.1
    reference: Reference = "mad"
    layer_sigma: Mapping[int, float] = field(default_factory=dict)
    detach: bool = True
    mask_padding: bool = True
    beta: float = BETA
    f_max: float = F_MAX
    eps: float = EPS

    def __post_init__(self) -> None:
        _check_reference(self.reference)
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    @classmethod
    def faithful_v1(cls, sigma: float = 0.1) -> AdaptiveNoise:
        """The official v1 training hook: sigma twice, padding in statistics, no detach."""
        return cls(sigma=sigma, reference="v1", detach=False, mask_padding=False)

    def __call__(
        self,
        h: torch.Tensor,
        layer: int,
        token_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(noisy, s)`` for layer index ``layer``; see :func:`adaptive_noise`."""
        mask = token_mask if self.mask_padding else None
        sigma = self.layer_sigma.get(layer, self.sigma)
        base = base_std_for(h, sigma, self.reference, mask)
        return adaptive_noise(
            h,
            base,
            generator=generator,
            beta=self.beta,
            f_max=self.f_max,
            eps=self.eps,
            mask=mask,
            detach_scale=self.detach,
        )


@dataclass(frozen=True)
class IsotropicNoise:
    """Control noise without the adaptive parts: ``s = sigma * std(h)`` for every element.

    Attributes:
        sigma: noise level relative to the layer's global std (over real tokens).
    """

    sigma: float = 0.1

    def __call__(
        self,
        h: torch.Tensor,
        layer: int,
        token_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(noisy, s)`` with a constant, detached ``s``."""
        base = base_std_for(h, self.sigma, "global_std", token_mask)
        s = torch.full_like(h, base)
        if token_mask is not None:
            s = s * token_mask.to(s.dtype).unsqueeze(-1)
        return h + s * draw_normal(h, generator), s


def neftune_noise(
    embeds: torch.Tensor,
    alpha: float,
    *,
    attention_mask: torch.Tensor | None = None,
    per_sequence_length: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """NEFTune: add ``U(-1, 1) * alpha / sqrt(L * d)`` to token embeddings (detached).

    Args:
        embeds: input embeddings, shape (B, T, d).
        alpha: NEFTune's alpha (5, 10 or 15 in the paper).
        attention_mask: (B, T) mask of real tokens.
        per_sequence_length: True (default, the NEFTune reference code): ``L`` is each
            sequence's real, unpadded length and padding gets no noise. False: ``L`` is the
            padded length ``T`` for every row and padding is noised too (HF Trainer, TRL, v2).
        generator: source of the uniform noise; ``None`` uses the global RNG.

    Returns:
        The noisy embeddings, same shape; the noise itself carries no gradient.
    """
    b, t, d = embeds.shape
    u = torch.rand(embeds.shape, generator=generator, device=embeds.device, dtype=embeds.dtype)
    u = (2.0 * u - 1.0).detach()
    if per_sequence_length and attention_mask is not None:
        m = attention_mask.to(embeds.dtype)
        lengths = m.sum(dim=1).clamp_min(1.0)
        mag = alpha / torch.sqrt(lengths * d)
        delta = u * m.unsqueeze(-1) * mag.view(b, 1, 1)
    else:
        delta = u * (alpha / math.sqrt(t * d))
    return embeds + delta.detach()
