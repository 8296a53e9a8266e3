"""The official v2 code's loss-component ablations, built from NoiseFiT's loss terms.

:func:`ablation_loss` gives the modes ``ce_noisy``, ``ce_kl``, ``kl_only``, ``consistency_only``
and ``full`` from the terms of :mod:`noisefit_lib.noisefit.losses`.

Explained in: notebooks/part1_noisefit/04_hybrid_loss.py (the ablation modes) and
book/noisefit_library.md (Losses). Source: the official v2 code, github.com/akhadangi/NoiseFiT
(``NoiseFiT.py``).
"""

from __future__ import annotations

from typing import Literal

import torch

from noisefit_lib.noisefit.losses import (
    FIXED,
    V2,
    V2_UNDETACHED,
    LossTerms,
    _terms,
    causal_ce,
    consistency_kl,
    hybrid_loss,
    soft_target_kl,
)

AblationMode = Literal["ce_noisy", "ce_kl", "kl_only", "consistency_only", "full"]
ABLATION_MODES: tuple[str, ...] = ("ce_noisy", "ce_kl", "kl_only", "consistency_only", "full")


def ablation_loss(
    mode: str,
    labels: torch.Tensor,
    *,
    ce: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
    noisy1: torch.Tensor | None = None,
    noisy2: torch.Tensor | None = None,
    alpha: float = 0.5,
    lam: float = 0.05,
    temperature: float = 1.0,
    faithful: bool = False,
    second_student: bool = True,
    kl_chunk_size: int | None = None,
) -> LossTerms:
    """The v2 loss-component ablations.

    ============================  ===========================  ====================================
    mode                          passes needed                objective
    ============================  ===========================  ====================================
    ``ce_noisy``                  noisy1                       CE(noisy1)
    ``ce_kl``                     clean, noisy1                alpha CE + (1 - alpha) KL(clean, n1)
    ``kl_only``                   clean, noisy1                KL(clean, n1)
    ``consistency_only``          noisy1, noisy2               KL(n2 || n1)
    ``full``                      clean, noisy1, noisy2        :func:`hybrid_loss`
    ============================  ===========================  ====================================

    Args:
        mode: one of :data:`ABLATION_MODES`.
        labels: (B, T).
        ce: clean CE (computed from ``clean`` when omitted).
        clean: clean logits.
        noisy1: first noisy logits.
        noisy2: second noisy logits.
        alpha: ``hybrid_loss_alpha``.
        lam: ``lambda_consistency``.
        temperature: T.
        faithful: use the official v2 code's conventions for each mode (unshifted masks;
            ``kl_only`` and ``consistency_only`` undetached with T on the teacher only);
            otherwise :data:`FIXED` everywhere.
        second_student: for ``full``, see :func:`hybrid_loss`.
        kl_chunk_size: for ``full``, see :func:`hybrid_loss`.

    Returns:
        :class:`LossTerms`.

    Raises:
        ValueError: for an unknown mode or a missing pass.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose {', '.join(ABLATION_MODES)}")
    need = {
        "ce_noisy": ("noisy1",),
        "ce_kl": ("clean", "noisy1"),
        "kl_only": ("clean", "noisy1"),
        "consistency_only": ("noisy1", "noisy2"),
        "full": ("clean", "noisy1", "noisy2"),
    }[mode]
    given = {"clean": clean, "noisy1": noisy1, "noisy2": noisy2}
    missing = [n for n in need if given[n] is None]
    if missing:
        raise ValueError(
            f"mode {mode!r} needs logits {', '.join(need)}; missing {', '.join(missing)}"
        )
    if mode == "ce_noisy":
        nce = causal_ce(noisy1, labels)
        return _terms(nce, noisy_ce=nce)
    conv = FIXED
    if faithful:
        conv = V2_UNDETACHED if mode in ("kl_only", "consistency_only") else V2
    if mode == "consistency_only":
        cons = consistency_kl(noisy1, noisy2, labels, temperature=temperature, convention=conv)
        return _terms(cons, consistency=cons)
    if mode == "kl_only":
        soft = soft_target_kl(clean, [noisy1], labels, temperature=temperature, convention=conv)
        return _terms(soft, soft=soft)
    if mode == "ce_kl":
        ce = causal_ce(clean, labels) if ce is None else ce
        soft = soft_target_kl(clean, [noisy1], labels, temperature=temperature, convention=conv)
        return _terms(alpha * ce + (1.0 - alpha) * soft, ce=ce, soft=soft)
    return hybrid_loss(
        ce,
        clean,
        noisy1,
        noisy2,
        labels,
        alpha=alpha,
        lam=lam,
        temperature=temperature,
        convention=conv,
        second_student=second_student,
        kl_chunk_size=kl_chunk_size,
    )


__all__ = ["ABLATION_MODES", "AblationMode", "ablation_loss"]
