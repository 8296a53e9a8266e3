"""Layer discovery and noise hooks on every supported architecture (tiny models from configs)."""

import pytest
import torch
from torch import nn

from noisefit_lib.noisefit import inject, noise, packing, toy_architectures

NO_DROPOUT = {
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "opt": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
    "phi": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0},
    "gpt_neox": {"hidden_dropout": 0.0, "attention_dropout": 0.0},
}


def _model(arch):
    return toy_architectures.toy_model(
        arch, hidden=32, layers=3, heads=4, vocab=64, **NO_DROPOUT.get(arch, {})
    )


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, 64, (2, 7), generator=g)
    am = torch.ones_like(x)
    am[1, 5:] = 0
    return x, am


@pytest.mark.parametrize("arch", toy_architectures.ARCHS)
def test_architecture_layers_hooks_and_noise_off(arch):
    m = _model(arch)
    blocks = inject.find_decoder_layers(m)
    assert len(blocks) == 3
    x, am = _batch()
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=am).logits
    with inject.NoiseInjector(m, [0, 2], noise.AdaptiveNoise(0.5)) as inj:
        with torch.no_grad():
            off = m(input_ids=x, attention_mask=am).logits  # hooks in place, noise not on
            with inj.active(token_mask=am):
                on = m(input_ids=x, attention_mask=am).logits
                assert inj.calls == 2  # both hooks fired once
                m.eval()
                ev = m(input_ids=x, attention_mask=am).logits  # eval(): provably off
                assert inj.calls == 2
                m.train()
                out = m.generate(
                    input_ids=x[:1, :3], max_new_tokens=3, do_sample=False, pad_token_id=0
                )
                assert inj.calls == 2  # generate() in train mode: still off
                assert out.shape == (1, 6)
        torch.testing.assert_close(off, ref, rtol=0, atol=0)
        torch.testing.assert_close(ev, ref, rtol=0, atol=0)
        assert not torch.allclose(on, ref)
    # hooks removed on exit
    assert not [
        h for b in blocks for h in b._forward_hooks.values() if h.__module__.startswith("noisefit")
    ]
    assert "generate" not in m.__dict__


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox"])
def test_shared_prefix_changes_no_value(arch):
    m = _model(arch).eval()
    x, am = _batch()
    blocks = inject.find_decoder_layers(m)
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=am).logits
        with packing.shared_prefix(blocks, 1, copies=3):
            packed = m(input_ids=x, attention_mask=am).logits
    assert packed.shape[0] == 6
    for k in range(3):
        torch.testing.assert_close(packed[2 * k : 2 * k + 2], ref, rtol=1e-5, atol=1e-5)


def test_rows_get_noise_only_where_asked():
    m = _model("llama")
    x, am = _batch()
    xx = x.repeat(3, 1)
    with torch.no_grad(), inject.NoiseInjector(m, [1], noise.AdaptiveNoise(0.5)) as inj:
        with inj.active(rows=slice(2, None), token_mask=am.repeat(2, 1)):
            z = m(input_ids=xx, attention_mask=am.repeat(3, 1)).logits
        ref = m(input_ids=x, attention_mask=am).logits
    torch.testing.assert_close(z[:2], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(z[2:4], ref)
    assert not torch.allclose(z[2:4], z[4:6])  # two noisy copies, two draws


class _TupleBlock(nn.Module):
    """A transformers-4.x-style block: returns (hidden, extra)."""

    def forward(self, h):
        return (h * 1.0, "extra")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_TupleBlock(), _TupleBlock()])

    def forward(self, h):
        for block in self.layers:
            h, extra = block(h)
            assert extra == "extra"
        return h


def test_tuple_outputs_are_handled():
    toy = _Toy().train()
    h = torch.randn(2, 3, 8)
    with inject.NoiseInjector(toy, [1], noise.AdaptiveNoise(0.5)) as inj:
        with inj.active():
            out = toy(h)
    assert out.shape == h.shape and not torch.allclose(out, h)


def test_no_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="could not find the decoder layers of Sequential"):
        inject.find_decoder_layers(nn.Sequential(nn.Linear(2, 2)))
    m = _model("llama")
    with pytest.raises(ValueError, match=r"layers 0\.\.2"):
        inject.NoiseInjector(m, [5], noise.AdaptiveNoise())


def test_layers_found_through_peft():
    from peft import LoraConfig, get_peft_model

    m = _model("llama")
    blocks = inject.find_decoder_layers(m)
    pm = get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert inject.find_decoder_layers(pm) is blocks


def test_neftune_injector_only_in_training():
    m = _model("llama")
    x, am = _batch()
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=am).logits
        with inject.NEFTuneInjector(m, 5.0, generator=torch.Generator().manual_seed(0)) as nef:
            with nef.active(attention_mask=am):
                on = m(input_ids=x, attention_mask=am).logits
                m.eval()
                off = m(input_ids=x, attention_mask=am).logits
                m.train()
    assert nef.calls == 1
    assert not torch.allclose(on, ref)
    torch.testing.assert_close(off, ref, rtol=0, atol=0)
