"""Hybrid loss (faithful v1 vs fixed), v2 ablations, R-Drop: identities and reductions."""

import pytest
import torch

from noisefit_lib.noisefit import ablations
from noisefit_lib.noisefit import losses as L


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


LABELS = torch.tensor([[3, 4, 5, 6, -100], [-100, 1, 2, 3, 4]])


def v1_transcription(ce, zc, z1, z2, labels, alpha, lam, temp):
    """The v1 formulas of the spec (section 1.2), written out directly."""
    mask = (labels != -100).to(zc.dtype)  # unshifted
    pc = torch.softmax(zc / temp, dim=-1)  # teacher: T here only, not detached

    def kl(p, zq):  # KL(p || softmax(zq)), summed over the vocabulary
        return (p * (torch.log(p) - torch.log_softmax(zq, dim=-1))).sum(-1)

    soft = (0.5 * (kl(pc, z1) + kl(pc, z2)) * mask).sum() / mask.sum()
    cons = (kl(torch.softmax(z2, dim=-1), z1) * mask).sum() / mask.sum()
    return alpha * ce + (1 - alpha) * soft + lam * cons, soft, cons


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_faithful_v1_equals_transcription_values_and_gradients(temp):
    zs = [_logits(i).requires_grad_(True) for i in range(3)]
    ce = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    got = L.hybrid_loss(ce, *zs, LABELS, alpha=0.3, lam=0.2, temperature=temp, convention=L.V1)
    zt = [z.detach().clone().requires_grad_(True) for z in zs]
    ce_t = ce.detach().clone().requires_grad_(True)
    want, soft, cons = v1_transcription(ce_t, *zt, LABELS, 0.3, 0.2, temp)
    torch.testing.assert_close(got.total, want)
    torch.testing.assert_close(got.soft, soft)
    torch.testing.assert_close(got.consistency, cons)
    got.total.backward()
    want.backward()
    for a, b in zip(zs, zt, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert zs[0].grad.abs().sum() > 0  # the v1 teacher is not detached


def test_fixed_detaches_teacher_and_shifts_mask():
    zc, z1, z2 = (_logits(i).requires_grad_(True) for i in range(3))
    terms = L.hybrid_loss(
        torch.tensor(0.0, dtype=torch.float64), zc, z1, z2, LABELS, alpha=0.0, lam=0.5
    )
    terms.total.backward()
    assert zc.grad is None or zc.grad.abs().sum() == 0  # no gradient through the teacher
    assert z2.grad.abs().sum() > 0  # z2 is still a student of the soft term
    # the last position predicts nothing: changing it changes nothing under FIXED...
    zc2 = zc.detach().clone()
    zc2[:, -1] += 3.0 * _logits(9)[:, -1]
    again = L.hybrid_loss(
        torch.tensor(0.0, dtype=torch.float64), zc2, z1, z2, LABELS, alpha=0.0, lam=0.5
    )
    torch.testing.assert_close(again.total, terms.total)
    # ...but it does under V1's unshifted mask (row 1's last label is real)
    v1a = L.hybrid_loss(torch.tensor(0.0, dtype=torch.float64), zc, z1, z2, LABELS, convention=L.V1)
    v1b = L.hybrid_loss(
        torch.tensor(0.0, dtype=torch.float64), zc2, z1, z2, LABELS, convention=L.V1
    )
    assert not torch.allclose(v1a.total, v1b.total)


def test_fixed_temperature_on_both_sides_with_t_squared():
    zc, z1 = _logits(0), _logits(1)
    t = 2.0
    got = L.soft_target_kl(zc, [z1], LABELS, temperature=t)
    p = torch.softmax(zc[:, :-1] / t, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(z1[:, :-1] / t, -1))).sum(-1)
    m = (LABELS[:, 1:] != -100).double()
    torch.testing.assert_close(got, (kl * m).sum() / m.sum() * t**2)


def test_kl_div_identity_and_soft_ce_gradient():
    """T7: F.kl_div(log q, p) summed = KL(p||q); soft-CE and KL share gradients (detached p)."""
    p = torch.softmax(_logits(0), -1)
    zq = _logits(1).requires_grad_(True)
    kl = L.kl_per_token(zq, p)
    direct = (p * (p.log() - torch.log_softmax(zq, -1))).sum(-1)
    torch.testing.assert_close(kl, direct)
    kl.sum().backward()
    g_kl = zq.grad.clone()
    zq.grad = None
    (-(p * torch.log_softmax(zq, -1)).sum(-1)).sum().backward()
    torch.testing.assert_close(g_kl, zq.grad)


def test_hybrid_reduces_to_ce():
    ce = torch.tensor(2.5)
    zc, z1, z2 = _logits(0).float(), _logits(1).float(), _logits(2).float()
    for conv in (L.FIXED, L.V1, L.V2):
        torch.testing.assert_close(
            L.hybrid_loss(ce, zc, z1, z2, LABELS, alpha=1.0, lam=0.0, convention=conv).total, ce
        )
        # identical passes: both KL terms vanish
        same = L.hybrid_loss(ce, zc, zc, zc, LABELS, alpha=0.4, lam=0.3, convention=conv)
        assert abs(float(same.soft)) < 1e-6 and abs(float(same.consistency)) < 1e-6
        torch.testing.assert_close(same.total, 0.4 * ce, atol=1e-6, rtol=0)


def test_rdrop_reduces_to_ce_and_is_symmetric():
    z1, z2 = _logits(0), _logits(1)
    same = L.rdrop_loss(z1, z1, LABELS)
    torch.testing.assert_close(same.total, L.causal_ce(z1, LABELS))
    assert float(same.rdrop_kl) == pytest.approx(0.0, abs=1e-12)
    a, b = L.rdrop_loss(z1, z2, LABELS), L.rdrop_loss(z2, z1, LABELS)
    torch.testing.assert_close(a.rdrop_kl, b.rdrop_kl)
    assert float(a.rdrop_kl) > 0
    torch.testing.assert_close(L.rdrop_loss(z1, z2, LABELS, alpha=0.0).total, a.ce)


def test_causal_ce_matches_manual_shift():
    z = _logits(0)
    m = LABELS[:, 1:] != -100
    logp = torch.log_softmax(z[:, :-1], -1)
    manual = -logp.gather(-1, LABELS[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)[m].mean()
    torch.testing.assert_close(L.causal_ce(z, LABELS).double(), manual)
    assert float(L.causal_ce(z, torch.full_like(LABELS, -100))) == 0.0


def test_ablation_modes():
    zc, z1, z2 = (_logits(i).float().requires_grad_(True) for i in range(3))
    ce = L.causal_ce(zc, LABELS)
    nce = ablations.ablation_loss("ce_noisy", LABELS, noisy1=z1)
    torch.testing.assert_close(nce.total, L.causal_ce(z1, LABELS))
    ce_kl = ablations.ablation_loss("ce_kl", LABELS, clean=zc, noisy1=z1, alpha=0.7)
    torch.testing.assert_close(ce_kl.total, 0.7 * ce + 0.3 * ce_kl.soft)
    full = ablations.ablation_loss("full", LABELS, clean=zc, noisy1=z1, noisy2=z2, lam=0.05)
    ref = L.hybrid_loss(ce, zc, z1, z2, LABELS, lam=0.05)
    torch.testing.assert_close(full.total, ref.total)
    # v2's kl_only keeps the teacher's gradient (faithful), ours does not
    for faithful, expect_grad in ((True, True), (False, False)):
        zc.grad = None
        ablations.ablation_loss(
            "kl_only", LABELS, clean=zc, noisy1=z1, faithful=faithful
        ).total.backward()
        assert (zc.grad is not None and zc.grad.abs().sum() > 0) == expect_grad
    cons = ablations.ablation_loss("consistency_only", LABELS, noisy1=z1, noisy2=z2)
    assert float(cons.total.detach()) > 0 and float(cons.ce) == 0
    with pytest.raises(ValueError, match="ce_noisy, ce_kl, kl_only, consistency_only, full"):
        ablations.ablation_loss("nope", LABELS)
    with pytest.raises(ValueError, match="missing noisy2"):
        ablations.ablation_loss("full", LABELS, clean=zc, noisy1=z1)


def test_forward_only_second_pass_keeps_value_and_gradient_of_first():
    zc, z1, z2 = (_logits(i).requires_grad_(True) for i in range(3))
    ce = torch.tensor(1.0, dtype=torch.float64)
    both = L.hybrid_loss(ce, zc, z1, z2, LABELS)
    one = L.hybrid_loss(ce, zc, z1, z2, LABELS, second_student=False)
    torch.testing.assert_close(one.total, both.total)  # same value
    one.total.backward()
    assert z2.grad is None  # the second noisy pass needs no backward
    g1 = z1.grad.clone()
    z1.grad = None
    k1 = L.soft_target_kl(zc, [z1], LABELS)
    cons = L.consistency_kl(z1, z2, LABELS)
    (0.5 * k1 + 0.1 * cons).backward()
    torch.testing.assert_close(g1, z1.grad)  # gradient of KL_1 with full weight


def test_v2_undetached_is_v1_and_v2_is_fixed_with_the_unshifted_mask():
    assert L.V2_UNDETACHED == L.V1
    assert not any(vars(L.V1).values())
    assert L.V2 == L.KLConvention(shift=False)


@pytest.mark.parametrize(("temp", "chunk"), [(1.0, 1), (1.0, 3), (2.0, 4), (1.0, 100)])
def test_chunked_kl_has_the_values_and_gradients_of_the_one_chunk_loss(temp, chunk):
    """v2's chunked KL: checkpointed chunks of target tokens, the same loss and gradients."""

    def run(**kw):
        zc, z1, z2 = (_logits(i).requires_grad_(True) for i in range(3))
        terms = L.hybrid_loss(
            None, zc, z1, z2, LABELS, temperature=temp, second_student=False, **kw
        )
        terms.total.backward()
        return terms, zc.grad, z1.grad, z2.grad

    whole, gc, g1, g2 = run()
    chunked, hc, h1, h2 = run(kl_chunk_size=chunk)
    for name in ("total", "ce", "soft", "consistency"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)
    torch.testing.assert_close(hc, gc)
    torch.testing.assert_close(h1, g1)
    assert g2 is None and h2 is None  # the second noisy pass stays forward-only
    with pytest.raises(ValueError, match="default objective only"):
        L.hybrid_loss(None, _logits(0), _logits(1), _logits(2), LABELS, kl_chunk_size=4)


def test_chunked_kl_keeps_no_vocabulary_sized_tensor_for_the_backward():
    """What autograd saves for the backward, beyond the logits themselves: the memory that
    stays allocated from the loss's forward to its backward."""
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(4, 64, 512, generator=g).requires_grad_(True) for _ in range(3)]
    labels = torch.randint(0, 512, (4, 64), generator=g)
    logits = {t.untyped_storage().data_ptr() for t in z}

    def saved_bytes(**kw):
        storages = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in logits:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            terms = L.hybrid_loss(None, *z, labels, second_student=False, **kw)
        terms.total.backward()
        return sum(storages.values())

    one_chunk = saved_bytes()
    chunked = saved_bytes(kl_chunk_size=32)
    assert one_chunk > 3 * 4 * 63 * 512 * 4  # several (tokens x vocabulary) fp32 tensors
    assert chunked < 4 * 63 * 512 * 4 / 20  # indices only
