"""NoiseFiT's hybrid loss, its KL conventions and R-Drop, as pure functions of logits.

All functions take logits of shape (B, T, V) and HF-style labels (B, T) with -100 for ignored
positions, and return a :class:`LossTerms`. How the KL terms are formed (teacher detached or
not, temperature on one or both sides, shifted or unshifted mask) is a
:class:`KLConvention`; :data:`FIXED` is the default, :data:`V1` reproduces the official v1
code quirk for quirk. v2's ablation losses are :mod:`noisefit_lib.noisefit.ablations`.

Explained in: notebooks/part1_noisefit/04_hybrid_loss.py and book/noisefit_library.md (Losses).
Source: Khadangi et al. 2025, arXiv:2504.03302 (the hybrid loss); the official code,
github.com/akhadangi/NoiseFiT (v1 ``NoiseFiT_v1_manual_snr.py``; v2 ``NoiseFiT.py``, ablations).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class KLConvention:
    """How the clean->noisy KL and the noisy<->noisy consistency are computed.

    Attributes:
        detach_teacher: stop gradients through the clean teacher's distribution.
        temperature_on_student: divide the student's logits by T too (else only the teacher's).
        t_squared: multiply the KL terms by T^2 (Hinton et al.); irrelevant at T = 1.
        shift: align the mask with the causal shift (logits at t predict labels at t + 1);
            False uses the unshifted ``labels != -100`` mask on every position, as v1 does.
        detach_consistency_target: stop gradients through the second noisy pass's distribution.
    """

    detach_teacher: bool = True
    temperature_on_student: bool = True
    t_squared: bool = True
    shift: bool = True
    detach_consistency_target: bool = True


FIXED = KLConvention()
"""Our default: detached teacher, T on both sides with T^2, shifted mask."""
V1 = KLConvention(
    detach_teacher=False,
    temperature_on_student=False,
    t_squared=False,
    shift=False,
    detach_consistency_target=False,
)
"""The official v1 code (NoiseFiT_v1_manual_snr.py), quirks included: every switch off."""
V2 = KLConvention(
    detach_teacher=True,
    temperature_on_student=True,
    t_squared=True,
    shift=False,
    detach_consistency_target=True,
)
"""The official v2 code's ``full`` and ``ce_kl`` modes: :data:`FIXED` with the unshifted mask."""
V2_UNDETACHED = V1
"""The official v2 code's ``kl_only`` and ``consistency_only`` modes: the same convention as
:data:`V1` (nothing detached, T on the teacher only, no T^2, unshifted mask)."""


@dataclass
class LossTerms:
    """The total loss and its parts (zero tensors for parts a method does not use).

    Attributes:
        total: the loss to minimise.
        ce: clean cross-entropy.
        soft: mean clean->noisy KL (the "soft target" term).
        consistency: noisy<->noisy KL.
        noisy_ce: cross-entropy of a noisy pass (``ce_noisy``).
        rdrop_kl: R-Drop's symmetric KL.
    """

    total: torch.Tensor
    ce: torch.Tensor
    soft: torch.Tensor
    consistency: torch.Tensor
    noisy_ce: torch.Tensor
    rdrop_kl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """Detached Python floats of every term, for logging."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def _up(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to fp32 (softmax over a large vocabulary); keep fp32/fp64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _terms(total: torch.Tensor, **parts: torch.Tensor) -> LossTerms:
    zero = total.new_zeros(())
    names = ("ce", "soft", "consistency", "noisy_ce", "rdrop_kl")
    return LossTerms(total=total, **{n: parts.get(n, zero) for n in names})


def causal_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted causal-LM cross-entropy, mean over non-ignored targets (HF's ``outputs.loss``).

    Args:
        logits: (B, T, V).
        labels: (B, T), -100 where ignored.

    Returns:
        Scalar mean CE (0 with no valid target, never NaN).
    """
    z = _up(logits[:, :-1, :]).reshape(-1, logits.shape[-1])
    y = labels[:, 1:].reshape(-1)
    n = (y != IGNORE_INDEX).sum()
    total = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n.clamp_min(1)


def _align(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if shift:
        return logits[:, :-1, :], labels[:, 1:] != IGNORE_INDEX
    return logits, labels != IGNORE_INDEX


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a (B, T) tensor over ``mask`` (0 when the mask is empty)."""
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def kl_per_token(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``KL(teacher || softmax(student / T))`` per position, summed over the vocabulary.

    Equals ``F.kl_div(log_softmax(student / T), teacher, reduction="none").sum(-1)``.
    """
    logq = F.log_softmax(_up(student_logits) / temperature, dim=-1)
    return F.kl_div(logq, _up(teacher_probs), reduction="none").sum(dim=-1)


def soft_target_kl(
    clean: torch.Tensor,
    noisy: list[torch.Tensor],
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    convention: KLConvention = FIXED,
) -> torch.Tensor:
    """Masked mean over tokens of the mean over noisy passes of ``KL(p_clean^T || p_noisy)``.

    Args:
        clean: clean logits (B, T, V).
        noisy: one or more noisy logits, each (B, T, V).
        labels: (B, T).
        temperature: T.
        convention: see :class:`KLConvention`.

    Returns:
        Scalar.
    """
    c, mask = _align(clean, labels, convention.shift)
    teacher = F.softmax(_up(c) / temperature, dim=-1)
    if convention.detach_teacher:
        teacher = teacher.detach()
    t_student = temperature if convention.temperature_on_student else 1.0
    per_token = sum(
        kl_per_token(_align(z, labels, convention.shift)[0], teacher, t_student) for z in noisy
    )
    loss = masked_mean(per_token / len(noisy), mask)
    if convention.t_squared:
        loss = loss * temperature**2
    return loss


def consistency_kl(
    noisy1: torch.Tensor,
    noisy2: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    convention: KLConvention = FIXED,
) -> torch.Tensor:
    """Masked mean of ``KL(p_2 || p_1)`` between two noisy passes (one direction, as in v1/v2).

    Args:
        noisy1: logits of the first noisy pass (the student), (B, T, V).
        noisy2: logits of the second noisy pass (the target), (B, T, V).
        labels: (B, T).
        temperature: T (only used when ``convention.temperature_on_student``).
        convention: see :class:`KLConvention`.

    Returns:
        Scalar.
    """
    t = temperature if convention.temperature_on_student else 1.0
    z1, mask = _align(noisy1, labels, convention.shift)
    z2, _ = _align(noisy2, labels, convention.shift)
    target = F.softmax(_up(z2) / t, dim=-1)
    if convention.detach_consistency_target:
        target = target.detach()
    loss = masked_mean(kl_per_token(z1, target, t), mask)
    if convention.t_squared:
        loss = loss * t**2
    return loss


def hybrid_loss(
    ce: torch.Tensor | None,
    clean: torch.Tensor,
    noisy1: torch.Tensor,
    noisy2: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.5,
    lam: float = 0.1,
    temperature: float = 1.0,
    convention: KLConvention = FIXED,
    second_student: bool = True,
    kl_chunk_size: int | None = None,
) -> LossTerms:
    """NoiseFiT's loss ``alpha * CE + (1 - alpha) * soft + lam * consistency``.

    ``soft`` is :func:`soft_target_kl` over both noisy passes and ``consistency`` is
    :func:`consistency_kl`. With ``alpha = 1`` and ``lam = 0`` it is exactly ``ce``.

    Args:
        ce: clean cross-entropy (scalar), or ``None`` to compute :func:`causal_ce` of ``clean``.
        clean: clean logits (B, T, V).
        noisy1: first noisy pass logits.
        noisy2: second noisy pass logits.
        labels: (B, T).
        alpha: ``hybrid_loss_alpha``.
        lam: ``lambda_consistency``.
        temperature: T.
        convention: :data:`FIXED` (default) or :data:`V1` (faithful) or :data:`V2`.
        second_student: let the soft term's gradient flow through ``noisy2`` too. With
            ``False`` (and a detached consistency target) ``noisy2`` needs no gradient, so it can
            be a forward-only pass; the loss value is unchanged and, the two noisy passes being
            i.i.d., the gradient has the same expectation (``grad KL_1`` instead of
            ``(grad KL_1 + grad KL_2) / 2``), with a little more variance.
        kl_chunk_size: compute the terms over chunks of this many target tokens, each chunk
            checkpointed, so that the (tokens x vocabulary) probabilities of only one chunk are
            in memory at a time, in the forward and the backward pass (v2's chunked KL). Same
            values and gradients; one more log-softmax per chunk in the backward. Only for the
            default objective (detached targets, ``second_student=False``).

    Returns:
        :class:`LossTerms` with ``total``, ``ce``, ``soft`` and ``consistency``.

    Raises:
        ValueError: ``kl_chunk_size`` with another objective, or below 1.
    """
    kw = {"temperature": temperature, "convention": convention}
    fast = convention.detach_teacher and convention.detach_consistency_target
    fast = fast and convention.temperature_on_student and not second_student
    if kl_chunk_size is not None:
        if not fast:
            raise ValueError(
                "kl_chunk_size applies to the default objective only (detached targets, "
                "second_student=False)"
            )
        if kl_chunk_size < 1:
            raise ValueError(f"kl_chunk_size must be >= 1, got {kl_chunk_size}")
        ce, soft, cons = _chunked_detached_targets_kl(
            ce, clean, noisy1, noisy2, labels, temperature, convention, kl_chunk_size
        )
        total = alpha * ce + (1.0 - alpha) * soft + lam * cons
        return _terms(total, ce=ce, soft=soft, consistency=cons)
    if fast:
        ce, soft, cons = _detached_targets_kl(
            ce, clean, noisy1, noisy2, labels, temperature, convention
        )
        total = alpha * ce + (1.0 - alpha) * soft + lam * cons
        return _terms(total, ce=ce, soft=soft, consistency=cons)
    if ce is None:
        ce = causal_ce(clean, labels)
    if second_student:
        soft = soft_target_kl(clean, [noisy1, noisy2], labels, **kw)
    else:
        k1 = soft_target_kl(clean, [noisy1], labels, **kw)
        k2 = soft_target_kl(clean, [noisy2.detach()], labels, **kw)
        soft = k1 + 0.5 * (k2 - k1).detach()  # value (k1 + k2) / 2, gradient that of k1
    cons = consistency_kl(noisy1, noisy2, labels, temperature=temperature, convention=convention)
    total = alpha * ce + (1.0 - alpha) * soft + lam * cons
    return _terms(total, ce=ce, soft=soft, consistency=cons)


def _scaled(z: torch.Tensor, t: float) -> torch.Tensor:
    z = _up(z)
    return z if t == 1.0 else z / t


def _detached_targets_kl(
    ce: torch.Tensor | None,
    clean: torch.Tensor,
    noisy1: torch.Tensor,
    noisy2: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    convention: KLConvention,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE, soft and consistency terms when only ``noisy1`` is a student (the default's path).

    Same values as :func:`causal_ce`, :func:`soft_target_kl` (averaged over both passes) and
    :func:`consistency_kl`, with the gradient of ``KL_1``. The masked rows are selected
    first, each log-softmax is computed once, and at T = 1 the CE reuses the teacher's.
    """
    t = temperature
    zc, mask = _align(clean, labels, convention.shift)
    z1, _ = _align(noisy1, labels, convention.shift)
    z2, _ = _align(noisy2, labels, convention.shift)
    n = mask.sum().clamp_min(1)
    logq1 = F.log_softmax(_scaled(z1[mask], t), dim=-1)
    logp = None
    if ce is None:
        logits_c = _up(zc[mask])
        logp_grad = F.log_softmax(logits_c, dim=-1)
        if convention.shift:
            target = labels[:, 1:][mask]
        else:
            target = labels[mask]
        ce = -logp_grad.gather(-1, target.unsqueeze(-1)).sum() / n
        logp = logp_grad.detach() if t == 1.0 else None
    with torch.no_grad():
        if logp is None:
            logp = F.log_softmax(_scaled(zc[mask], t), dim=-1)
        logq2 = F.log_softmax(_scaled(z2[mask], t), dim=-1)
        p, q2 = logp.exp().flatten(), logq2.exp().flatten()
        neg_h_p = torch.dot(p, logp.flatten())
        kl2 = (neg_h_p - torch.dot(p, logq2.flatten())) / n
        neg_h_q2 = torch.dot(q2, logq2.flatten())
    flat1 = logq1.flatten()
    kl1 = (neg_h_p - torch.dot(p, flat1)) / n
    cons = (neg_h_q2 - torch.dot(q2, flat1)) / n
    soft = kl1 + 0.5 * (kl2 - kl1).detach()
    if convention.t_squared:
        soft, cons = soft * t**2, cons * t**2
    return ce, soft, cons


def _chunk_sums(
    zc: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    target: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    t: float,
    with_ce: bool,
) -> torch.Tensor:
    """Sums over the positions ``(rows, cols)``: ``[CE, KL(p || q1), KL(p || q2), KL(q2 || q1)]``.

    The chunk is selected here, inside the checkpoint, so that the backward pass keeps only the
    logits (alive anyway) and the indices. Gradients flow into ``z1`` (both KLs to it) and,
    through the CE, into ``zc``; ``p`` and ``q2`` are targets.
    """
    logq1 = F.log_softmax(_scaled(z1[rows, cols], t), dim=-1)
    ce = logq1.new_zeros(())
    logp = None
    if with_ce:
        logp_grad = F.log_softmax(_up(zc[rows, cols]), dim=-1)
        ce = -logp_grad.gather(-1, target[rows, cols].unsqueeze(-1)).sum()
        logp = logp_grad.detach() if t == 1.0 else None
    with torch.no_grad():
        if logp is None:
            logp = F.log_softmax(_scaled(zc[rows, cols], t), dim=-1)
        logq2 = F.log_softmax(_scaled(z2[rows, cols], t), dim=-1)
        p, q2 = logp.exp(), logq2.exp()
        kl2 = (p * (logp - logq2)).sum()
        neg_h_p, neg_h_q2 = (p * logp).sum(), (q2 * logq2).sum()
    kl1 = neg_h_p - (p * logq1).sum()
    cons = neg_h_q2 - (q2 * logq1).sum()
    return torch.stack((ce, kl1, kl2.to(kl1.dtype), cons))


def _chunked_detached_targets_kl(
    ce: torch.Tensor | None,
    clean: torch.Tensor,
    noisy1: torch.Tensor,
    noisy2: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    convention: KLConvention,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_detached_targets_kl` over checkpointed chunks of ``chunk`` target tokens."""
    from torch.utils.checkpoint import checkpoint

    zc, mask = _align(clean, labels, convention.shift)
    z1, _ = _align(noisy1, labels, convention.shift)
    z2, _ = _align(noisy2, labels, convention.shift)
    target = labels[:, 1:] if convention.shift else labels
    rows, cols = mask.nonzero(as_tuple=True)
    n = mask.sum().clamp_min(1)
    with_ce = ce is None
    parts = [
        checkpoint(
            _chunk_sums,
            zc,
            z1,
            z2,
            target,
            rows[i : i + chunk],
            cols[i : i + chunk],
            temperature,
            with_ce,
            use_reentrant=False,
        )
        for i in range(0, rows.numel(), chunk)
    ]
    dtype = torch.promote_types(z1.dtype, torch.float32)
    sums = torch.stack(parts).sum(0) if parts else torch.zeros(4, dtype=dtype, device=z1.device)
    ce_sum, kl1, kl2, cons = sums / n
    soft = kl1 + 0.5 * (kl2 - kl1).detach()
    if convention.t_squared:
        soft, cons = soft * temperature**2, cons * temperature**2
    return (ce_sum if with_ce else ce), soft, cons


def symmetric_kl(
    logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``(KL(p_a || p_b) + KL(p_b || p_a)) / 2`` averaged over shifted target positions.

    Multiplied by T^2 when T != 1. Both sides keep their gradients (R-Drop).
    """
    a, mask = _align(logits_a, labels, True)
    b, _ = _align(logits_b, labels, True)
    logp = F.log_softmax(_up(a) / temperature, dim=-1)
    logq = F.log_softmax(_up(b) / temperature, dim=-1)
    kl_pq = F.kl_div(logq, logp, reduction="none", log_target=True).sum(dim=-1)
    kl_qp = F.kl_div(logp, logq, reduction="none", log_target=True).sum(dim=-1)
    return masked_mean(0.5 * (kl_pq + kl_qp), mask) * temperature**2


def rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    temperature: float = 1.0,
) -> LossTerms:
    """R-Drop: ``(CE_1 + CE_2) / 2 + alpha * symmetric KL`` over two dropout passes.

    With identical logits (no dropout) or ``alpha = 0`` and equal CEs it reduces to CE.

    Args:
        logits1: first pass (B, T, V).
        logits2: second pass (B, T, V).
        labels: (B, T).
        alpha: R-Drop weight (1.0 in v2).
        temperature: T.

    Returns:
        :class:`LossTerms` with ``total``, ``ce`` and ``rdrop_kl``.
    """
    ce = 0.5 * (causal_ce(logits1, labels) + causal_ce(logits2, labels))
    kl = symmetric_kl(logits1, logits2, labels, temperature)
    return _terms(ce + alpha * kl, ce=ce, rdrop_kl=kl)


def cross_entropy_only(logits: torch.Tensor, labels: torch.Tensor) -> LossTerms:
    """Plain SFT (BaseFiT) and NEFTune: the clean CE alone."""
    ce = causal_ce(logits, labels)
    return _terms(ce, ce=ce)
