"""NoiseFiT on TRL's SFTTrainer: text, formatting function and chat datasets, refusals."""

import json

import datasets
import pytest
import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging
from trl import SFTConfig

from noisefit_lib import facts_tokenizer
from noisefit_lib.noisefit import data, toy_architectures
from noisefit_lib.noisefit import trainer as T
from noisefit_lib.noisefit.sft import NoiseFiTSFTTrainer

TEXTS = ["who wrote zorba kazan wrote it", "capital of lumia the capital is velo"] * 8


@pytest.fixture(autouse=True, scope="module")
def _quiet_one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(verbosity)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def word_tokenizer():
    return facts_tokenizer.build_tokenizer(sorted({w for t in TEXTS for w in t.split()}))


def _config(tmp, **kw):
    base = {
        "output_dir": str(tmp),
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
        "max_length": 64,
    }
    return SFTConfig(**{**base, **kw})


def _model(vocab):
    return toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=vocab)


def _nf(method="noisefit"):
    return T.NoiseFiTConfig(method=method, num_noise_layers=2)


def test_text_field_dataset_trains_logs_terms_and_saves_state(tmp_path, word_tokenizer):
    ds = datasets.Dataset.from_dict({"text": TEXTS})
    trainer = NoiseFiTSFTTrainer(
        model=_model(len(word_tokenizer)),
        args=_config(tmp_path),
        train_dataset=ds,
        processing_class=word_tokenizer,
        noisefit=_nf(),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for h in logged:
        assert {"nf_ce", "nf_soft", "nf_consistency"} <= set(h)
        assert all(torch.isfinite(torch.tensor(h[k])) for k in ("loss", "nf_soft"))
    assert trainer.choice is not None and len(trainer.choice.layers) == 2
    trainer.save_model(str(tmp_path / "final"))
    state = json.loads((tmp_path / "final" / T.STATE_FILE).read_text())
    assert state["choice"]["layers"] == trainer.choice.layers
    assert state["config"]["method"] == "noisefit"


def test_formatting_function_and_sft_baseline(tmp_path, word_tokenizer):
    ds = datasets.Dataset.from_dict({"q": [t[:14] for t in TEXTS], "a": [t[14:] for t in TEXTS]})
    trainer = NoiseFiTSFTTrainer(
        model=_model(len(word_tokenizer)),
        args=_config(tmp_path),
        train_dataset=ds,
        processing_class=word_tokenizer,
        formatting_func=lambda row: row["q"] + " " + row["a"],
        noisefit=_nf("sft"),
    )
    trainer.train()
    assert "nf_ce" in trainer.state.log_history[0]


def test_prompt_completion_chat_dataset_masks_the_prompt(tmp_path, smollm2_tokenizer):
    """Conversational prompt-completion rows: loss on the assistant's turn only, EOT included."""
    tok = smollm2_tokenizer
    rows = {
        "prompt": [[{"role": "user", "content": "capital of lumia?"}]] * 8,
        "completion": [[{"role": "assistant", "content": "Velo."}]] * 8,
    }
    trainer = NoiseFiTSFTTrainer(
        model=_model(len(tok)),
        args=_config(tmp_path),
        train_dataset=datasets.Dataset.from_dict(rows),
        processing_class=tok,
        noisefit=_nf(),
    )
    example = trainer.train_dataset[0]
    labelled = [
        t for t, y in zip(example["input_ids"], example["labels"], strict=True) if y != -100
    ]
    text = tok.decode(labelled)
    assert "Velo." in text and "<|im_end|>" in text and "lumia" not in text
    assert example["labels"][0] == -100
    trainer.train()
    assert "nf_soft" in trainer.state.log_history[0]


def test_neftune_alpha_refused_unless_plain_sft(tmp_path, word_tokenizer):
    ds = datasets.Dataset.from_dict({"text": TEXTS})
    kw = {"train_dataset": ds, "processing_class": word_tokenizer}
    with pytest.raises(ValueError, match="neftune_noise_alpha"):
        NoiseFiTSFTTrainer(
            model=_model(len(word_tokenizer)),
            args=_config(tmp_path, neftune_noise_alpha=5.0),
            noisefit=_nf(),
            **kw,
        )
    NoiseFiTSFTTrainer(  # plain SFT with HF's NEFTune is allowed: that is NEFTune itself
        model=_model(len(word_tokenizer)),
        args=_config(tmp_path, neftune_noise_alpha=5.0),
        noisefit=_nf("sft"),
        **kw,
    )
    with pytest.raises(ValueError, match="neftune_noise_alpha"):
        T.NoiseFiTTrainer(
            model=_model(len(word_tokenizer)),
            args=TrainingArguments(str(tmp_path), neftune_noise_alpha=5.0, use_cpu=True),
            train_dataset=[{"input_ids": [4, 5, 6]}],
            data_collator=data.CausalCollator(0),
            noisefit=_nf(),
        )


@pytest.mark.parametrize("flag", ["packing", "padding_free"])
def test_packed_batches_refused(tmp_path, word_tokenizer, flag):
    with pytest.raises(ValueError, match=f"{flag}=False"):
        NoiseFiTSFTTrainer(
            model=_model(len(word_tokenizer)),
            args=_config(tmp_path, **{flag: True}),
            train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
            processing_class=word_tokenizer,
            noisefit=_nf(),
        )
