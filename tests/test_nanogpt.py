import functools
import math

import pytest
import torch

from noisefit_lib import nanogpt


def _qk(b=2, h=2, t=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)


@pytest.mark.parametrize("name", sorted(nanogpt.NORMALISERS))
def test_normalisers_are_causal_distributions(name):
    q, k = _qk()
    a = nanogpt.get_normaliser(name)(q, k)
    assert a.shape == (2, 2, 7, 7)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 7))
    assert (a.triu(1) == 0).all(), "weights on future keys"


def test_softmax_matches_torch_sdpa():
    q, k = _qk()
    v = torch.randn(2, 2, 7, 8)
    ours = nanogpt.softmax_attention(q, k) @ v
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)


def test_lssa_is_softplus_of_cosines_scaled_by_log_d_log_n():
    q, k = _qk(t=5)
    a = nanogpt.NORMALISERS["lssa"](q, k)
    cos = torch.nn.functional.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1)
    i = 3  # row 3 sees N = 4 keys; Dh = 8
    phi = torch.nn.functional.softplus(math.log(8) * math.log(4) * cos[..., i, : i + 1])
    torch.testing.assert_close(a[..., i, : i + 1], phi / phi.sum(-1, keepdim=True))
    torch.testing.assert_close(a[..., 0, 0], torch.ones(2, 2))  # row 1: log N = 0, one key


def test_reweight_thresholds_at_uniform_level_after_the_free_rows():
    a = torch.tensor(
        [[[[1.0, 0.0, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0], [0.4, 0.3, 0.2, 0.1]]]]
    )
    r = nanogpt.reweight(a, power=2.0)
    torch.testing.assert_close(r[0, 0, 0], a[0, 0, 0])  # one key: unchanged
    torch.testing.assert_close(r[0, 0, 1], torch.tensor([16 / 17, 1 / 17, 0.0, 0.0]))  # O = 0
    torch.testing.assert_close(r[0, 0, 2], torch.tensor([25 / 38, 9 / 38, 4 / 38, 0.0]))
    torch.testing.assert_close(r[0, 0, 3], torch.tensor([0.36 / 0.40, 0.04 / 0.40, 0.0, 0.0]))
    flat = torch.full((1, 1, 5, 5), 0.2).tril()
    torch.testing.assert_close(nanogpt.reweight(flat, 3.0)[0, 0, 4], flat[0, 0, 4])  # uniform: kept
    big = nanogpt.reweight(torch.softmax(torch.randn(1, 1, 300, 300).tril(), -1), power=40.0)
    assert torch.isfinite(big).all()


def test_lssar_power_sharpens_monotonically():
    q, k = _qk(t=32, seed=3)
    ent = []
    for p in (1.0, 2.0, 8.0):
        a = nanogpt.lssar_attention(q, k, power=p)
        ent.append(-(a * a.clamp_min(1e-30).log()).sum(-1).mean().item())
    assert ent[0] > ent[1] > ent[2]


def test_linear_attention_matches_recurrent_form():
    q, k = _qk(b=1, h=1, t=6, d=4)
    v = torch.randn(1, 1, 6, 3)
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    s, z, outs = torch.zeros(4, 3), torch.zeros(4), []
    for t in range(6):
        s, z = s + fk[0, 0, t, :, None] * v[0, 0, t], z + fk[0, 0, t]
        outs.append(fq[0, 0, t] @ s / (fq[0, 0, t] @ z))
    torch.testing.assert_close(nanogpt.linear_attention(q, k) @ v, torch.stack(outs)[None, None])


def test_get_normaliser_accepts_callables_and_rejects_unknown_names():
    fn = functools.partial(nanogpt.lssar_attention, power=2.0)
    assert nanogpt.get_normaliser(fn) is fn
    with pytest.raises(ValueError, match="known"):
        nanogpt.get_normaliser("nope")


def test_rope_preserves_norm_and_is_relative():
    x = torch.randn(1, 1, 10, 8)
    torch.testing.assert_close(nanogpt.rope(x).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(8), torch.randn(8)
    qs, ks = nanogpt.rope(q.expand(1, 1, 10, 8)), nanogpt.rope(k.expand(1, 1, 10, 8))
    torch.testing.assert_close(qs[0, 0, 5] @ ks[0, 0, 2], qs[0, 0, 8] @ ks[0, 0, 5])


@pytest.mark.parametrize("pos", ["rope", "learned", "none"])
def test_model_is_causal_and_shapes(pos):
    cfg = nanogpt.GPTConfig(vocab_size=11, d_model=16, n_layer=2, n_head=2, pos=pos, block_size=12)
    model = nanogpt.NanoGPT(cfg, generator=torch.Generator().manual_seed(0)).eval()
    idx = torch.randint(0, 11, (2, 12))
    logits = model(idx)
    assert logits.shape == (2, 12, 11)
    idx2 = idx.clone()
    idx2[:, 8:] = (idx2[:, 8:] + 1) % 11
    torch.testing.assert_close(model(idx2)[:, :8], logits[:, :8])


def test_init_is_seeded_and_weights_tied():
    cfg = nanogpt.GPTConfig(vocab_size=11, d_model=16, n_layer=1, n_head=2)
    a = nanogpt.NanoGPT(cfg, generator=torch.Generator().manual_seed(1))
    b = nanogpt.NanoGPT(cfg, generator=torch.Generator().manual_seed(1))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert a.head.weight is a.tok.weight
    assert nanogpt.count_parameters(a) == sum(p.numel() for p in a.parameters())


def test_set_normaliser_swaps_every_layer_and_custom_mixer_and_head():
    cfg = nanogpt.GPTConfig(vocab_size=7, d_model=8, n_layer=2, n_head=1)
    model = nanogpt.NanoGPT(cfg)
    nanogpt.set_normaliser(model, "lssa")
    assert all(b.mixer.normaliser is nanogpt.NORMALISERS["lssa"] for b in model.blocks)
    head = torch.nn.Linear(8, 7)
    mixed = nanogpt.NanoGPT(cfg, mixer=lambda c: torch.nn.Linear(c.d_model, c.d_model), head=head)
    assert isinstance(mixed.blocks[0].mixer, torch.nn.Linear) and mixed.head is head
    assert mixed(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 7)


def test_config_validation():
    with pytest.raises(ValueError, match="divide"):
        nanogpt.GPTConfig(vocab_size=5, d_model=10, n_head=3)
    with pytest.raises(ValueError, match="pos"):
        nanogpt.GPTConfig(vocab_size=5, pos="alibi")


def test_generate_greedy_and_training_reduces_loss():
    torch.manual_seed(0)
    cfg = nanogpt.GPTConfig(vocab_size=5, d_model=16, n_layer=1, n_head=2)
    model = nanogpt.NanoGPT(cfg, generator=torch.Generator().manual_seed(0))
    seq = torch.arange(24).remainder(5)[None].repeat(8, 1)  # 0 1 2 3 4 0 1 ...
    losses = nanogpt.train_lm(model, lambda step: (seq[:, :-1], seq[:, 1:]), num_steps=60, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    out = nanogpt.generate(model, seq[:1, :6], max_new_tokens=4)
    assert out.shape == (1, 10)
    assert out[0, 6:].tolist() == [1, 2, 3, 4]
    assert not model.training
