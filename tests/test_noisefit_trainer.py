"""NoiseFiTTrainer: every method, faithful v1 exactness, packing, save/reload/resume, LoRA."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, TrainingArguments
from transformers.utils import logging as hf_logging

from noisefit_lib.noisefit import data, inject, toy_architectures
from noisefit_lib.noisefit import trainer as T

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _quiet_one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(verbosity)
    torch.set_num_threads(n)


def _items(n=32, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(5, 11, (n,), generator=g)
    return [{"input_ids": torch.randint(4, vocab, (int(k),), generator=g).tolist()} for k in lens]


def _trainer(tmp, method="noisefit", model=None, steps=2, save_steps=0, **nf):
    m = (
        model
        if model is not None
        else toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=100)
    )
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    cfg = T.NoiseFiTConfig(method=method, num_noise_layers=2, **nf)
    return T.NoiseFiTTrainer(
        model=m,
        args=args,
        train_dataset=_items(),
        data_collator=data.CausalCollator(0),
        noisefit=cfg,
    )


@pytest.mark.parametrize(
    ("method", "nf"),
    [
        ("sft", {}),
        ("noisefit", {}),
        ("noisefit", {"faithful": True}),
        ("noisefit", {"share_prefix": True, "pack": True, "layer_selection": "scale"}),
        ("noisefit", {"noisy2_grad": True, "pack": True}),
        ("neftune", {}),
        ("rdrop", {}),
        ("ce_noisy", {}),
        ("ce_kl", {"pack": False}),
        ("kl_only", {"pack": True}),
        ("consistency_only", {"faithful": True}),
    ],
)
def test_every_method_trains_and_logs_terms(tmp_path, method, nf):
    tr = _trainer(tmp_path, method, **nf)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 2 and all("nf_total" in h and "nf_ce" in h for h in logs)
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.parameters(), strict=True))
    blocks = inject.find_decoder_layers(tr.model)
    ours = [
        h
        for b in blocks
        for h in (*b._forward_hooks.values(), *b._forward_pre_hooks.values())
        if h.__module__.startswith("noisefit_lib")
    ]
    assert ours == []  # every NoiseFiT hook removed after train()
    if method == "noisefit" and not nf.get("faithful"):
        assert logs[-1]["nf_soft"] > 0 and logs[-1]["nf_consistency"] > 0
        assert any(k.startswith("nf_ratio_") for k in logs[-1])
    if method == "rdrop":
        assert all(
            getattr(m, "attention_dropout", 0.0) == 0.0 for m in tr.model.modules()
        )  # dropout restored


def test_faithful_compute_loss_equals_v1_transcription(tmp_path):
    """Three passes with gradient, sigma twice, undetached noise scale, V1 loss: exactly."""
    tr = _trainer(tmp_path, "noisefit", faithful=True, layers=[0, 2], noise_std=0.3)
    tr.setup_noise()
    tr._reseed = lambda: tr._injector.generator.manual_seed(123)
    batch = data.CausalCollator(0)(_items()[:4])
    model = tr.model
    loss = tr.compute_loss(model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    tr.teardown_noise()

    sigma, gen = 0.3, torch.Generator().manual_seed(123)
    blocks = inject.find_decoder_layers(model)

    def v1_hook(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        v = h.var(-1, keepdim=True)
        f = torch.clamp(torch.exp(v / (v.mean() + 1e-6)), max=5.0)
        med = h.median(-1, keepdim=True).values
        mad = (h - med).abs().median(-1, keepdim=True).values
        mad = torch.maximum(mad, 1e-6 * h.norm(dim=-1, keepdim=True))
        w = torch.exp(-0.1 * (h - med).abs() / (mad + 1e-6))
        base = sigma * h.std().item() * sigma
        return h + torch.randn(h.shape, generator=gen) * base * mad * w * f

    out_c = model(**batch)
    handles = [blocks[i].register_forward_hook(v1_hook) for i in (0, 2)]
    z1, z2 = model(**batch).logits, model(**batch).logits
    for h in handles:
        h.remove()
    mask = (batch["labels"] != -100).float()
    pc = torch.softmax(out_c.logits, -1)

    def kl(p, zq):
        return (p * (torch.log(p) - torch.log_softmax(zq, -1))).sum(-1)

    soft = (0.5 * (kl(pc, z1) + kl(pc, z2)) * mask).sum() / mask.sum()
    cons = (kl(torch.softmax(z2, -1), z1) * mask).sum() / mask.sum()
    want = 0.5 * out_c.loss + 0.5 * soft + 0.1 * cons
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(loss, want)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_eval_loss_is_plain_ce(tmp_path):
    tr = _trainer(tmp_path, "noisefit", layers=[1])
    tr.setup_noise()
    batch = data.CausalCollator(0)(_items()[:4])
    tr.model.eval()
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, batch)
        ref = tr.model(**batch).loss
    tr.teardown_noise()
    torch.testing.assert_close(loss, ref)
    assert tr._injector is None


def test_save_reload_and_resume(tmp_path):
    full = _trainer(tmp_path / "full", "noisefit", steps=4, save_steps=2)
    full.train()
    state = json.loads((tmp_path / "full" / "checkpoint-2" / T.STATE_FILE).read_text())
    assert state["choice"]["layers"] == full.choice.layers
    full.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    x = torch.randint(4, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    full.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, full.model(input_ids=x).logits)
    # resume from checkpoint-2 in a fresh trainer: same noise, same data, same end point
    resumed = _trainer(tmp_path / "full", "noisefit", steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lora_adapter_round_trip(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=100)
    base.save_pretrained(tmp_path / "base")
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    tr = _trainer(tmp_path / "run", "noisefit", model=pm, steps=2)
    tr.train()
    assert tr.choice is not None and tr.state.global_step == 2
    tr.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / T.STATE_FILE).is_file()
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    again = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    pm.eval()
    x = torch.randint(4, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, pm(input_ids=x).logits)
        merged = again.merge_and_unload()
        torch.testing.assert_close(
            merged(input_ids=x).logits, pm(input_ids=x).logits, rtol=1e-5, atol=1e-5
        )


def test_config_validation_lists_choices():
    with pytest.raises(ValueError, match="sft, noisefit, neftune, rdrop"):
        T.NoiseFiTConfig(method="nope")
    with pytest.raises(ValueError, match="Largest, Lowest"):
        T.NoiseFiTConfig(snr_format="largest")


ACCEL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    torch.set_num_threads(1)
    from transformers import TrainingArguments
    from transformers.utils import logging
    logging.set_verbosity_error()
    from noisefit_lib.noisefit import data, toy_architectures, trainer as T
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": torch.randint(4, 100, (8,), generator=g).tolist()} for _ in range(32)]
    args = TrainingArguments(output_dir=sys.argv[1], per_device_train_batch_size=4, max_steps=2,
                             logging_steps=1, report_to="none", disable_tqdm=True, use_cpu=True,
                             save_strategy="no")
    model = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=100)
    tr = T.NoiseFiTTrainer(model=model, args=args, train_dataset=items,
                           data_collator=data.CausalCollator(0),
                           noisefit=T.NoiseFiTConfig(num_noise_layers=2))
    tr.train()
    rank = tr.args.process_index
    w = sum(float(p.sum()) for p in tr.model.parameters())
    logged = [h["nf_total"] for h in tr.state.log_history if "nf_total" in h]
    out = {"rank": rank, "world": tr.args.world_size, "layers": tr.choice.layers, "w": w,
           "nf_total": logged}
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
        json.dump(out, fh)
    """
)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(ACCEL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["layers"] == r1["layers"]  # one layer choice, broadcast from rank 0
    assert r0["w"] == pytest.approx(r1["w"], rel=1e-6)  # DDP kept replicas in sync
    # the logged loss terms are averaged over processes, like `loss`, so every rank logs the same
    assert len(r0["nf_total"]) == 2 and r0["nf_total"] == r1["nf_total"]
