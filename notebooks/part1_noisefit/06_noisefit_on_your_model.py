# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-noisefit-on-your-model)=
# # NoiseFiT on your own model
#
# **Claim.** NoiseFiT is a recipe for fine-tuning an existing pretrained language model, with
# LoRA, that "significantly reduces hallucination rates" compared with standard fine-tuning
# {cite:p}`khadangi2025noise`. The earlier chapters took the method apart; this one uses it the way
# you would on your own model, and measures what it does to a checkpoint whose facts we can check.
#
# In this chapter we
# - save a small checkpoint to a folder and load it back with `from_pretrained(name_or_path)`, the
#   same call that loads a model from the Hugging Face hub (one line changes);
# - choose the noisy layers with v1's SNR and with v2's automatic calibration, and look inside
#   the `NoiseInjector` that adds the noise;
# - train with `NoiseFiTTrainer`, a `transformers.Trainer`: per-term loss logging, checkpoints and
#   resuming, LoRA through `peft`;
# - run the command line on a CSV file (`train`, then `predict`), see what a bad file gives, and
#   show the `accelerate launch` command for several GPUs;
# - compare plain fine-tuning (SFT) with NoiseFiT on the checkpoint's own facts.
#
# This chapter is the executed companion of the library's manual, {doc}`/book/noisefit_library`,
# which lists every option; here each step runs.
#
# Run time, measured as CPU time on the project's shared 2-core CPU: `smoke` about 20 s (half of
# it importing `torch`, `transformers` and `peft`), `book` (the default) about 60 s once chapter 1
# has cached the base model, a third of it in the two command-line processes, and about 45 s more
# with an empty cache (pretraining the base model). `full` should take 3-4 minutes on one GPU,
# plus the `full` base model's pretraining if chapter 1 has not cached it.

# %% tags=["remove-cell"]
# Colab or a bare Jupyter: install the library from the same ref as this notebook; nothing
# happens where this version is importable (a clone, CI). NOISEFIT_PIP_SPEC overrides the source.
import importlib
import os
import subprocess
import sys

NOISEFIT_LIB = "0.1.0"
SOURCE = "noisefit-lib @ git+https://github.com/noisefit-book/noisefit-book@main"
try:
    import noisefit_lib
except ImportError:
    noisefit_lib = None
if noisefit_lib is None or noisefit_lib.__version__ != NOISEFIT_LIB:
    _spec = os.environ.get("NOISEFIT_PIP_SPEC", SOURCE)
    _pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", _spec], capture_output=True, text=True
    )
    if _pip.returncode != 0:
        print(_pip.stdout[-4000:], _pip.stderr[-4000:], sep="\n")
        raise RuntimeError(f"pip could not install {_spec}: its output is above")
    if noisefit_lib is not None:
        raise RuntimeError("noisefit-lib was updated: restart the runtime, then run all cells")
    importlib.invalidate_caches()
    import noisefit_lib

# %% tags=["parameters"]
preset = "book"  # smoke | book | full
seed = 0  # seeds the base model, the noisy labels and the fine-tuning runs
device = "auto"  # auto | cpu | cuda
n_seeds = None  # fine-tuning seeds of the experiment, seed, seed+1, ... (None: the preset's)
steps = None  # optimiser steps of each experiment run (None: the preset's)
noise_std = None  # NoiseFiT's sigma (None: the library default 0.1)
accelerate = None  # run the two-process `accelerate launch` demo (None: the preset's)

# %%
import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import yaml

with warnings.catch_warnings():  # tqdm's "IProgress not found" names a local path: not stored
    warnings.filterwarnings("ignore", message="IProgress not found")
    import datasets
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig

from noisefit_lib import (
    answers,
    facts,
    facts_llama,
    plotting,
    records,
    report,
    runtime,
    stats,
    verdicts,
)
from noisefit_lib.noisefit import calibrate, cli, data, inject, noise
from noisefit_lib.noisefit import layers as nf_layers
from noisefit_lib.noisefit.sft import NoiseFiTSFTTrainer
from noisefit_lib.noisefit.trainer import STATE_FILE, NoiseFiTConfig, NoiseFiTTrainer

hf_logging.set_verbosity_error()  # no info lines from transformers in the stored outputs
hf_logging.disable_progress_bar()
datasets.disable_progress_bars()  # TRL prepares its data with datasets' map: bars have timings
logging.getLogger("trl").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")

PRESETS = {
    "smoke": {
        "n_seeds": 1,
        "steps": 4,
        "demo_steps": 2,
        "cli_steps": 2,
        "batch_size": 16,
        "lr": 3e-4,
        "k": 1,
        "noise_std": 0.1,
        "big_noise_std": 0.5,
        "label_noise": 0.2,
        "accelerate": False,
        "cli_subprocess": False,
    },
    "book": {
        "n_seeds": 2,
        "steps": 50,
        "demo_steps": 8,
        "cli_steps": 10,
        "batch_size": 16,
        "lr": 3e-4,
        "k": 1,
        "noise_std": 0.1,
        "big_noise_std": 0.5,
        "label_noise": 0.2,
        "accelerate": False,
        "cli_subprocess": True,
    },
    "full": {
        "n_seeds": 3,
        "steps": 400,
        "demo_steps": 20,
        "cli_steps": 40,
        "batch_size": 32,
        "lr": 3e-4,
        "k": 3,
        "noise_std": 0.1,
        "big_noise_std": 0.5,
        "label_noise": 0.2,
        "accelerate": True,
        "cli_subprocess": True,
    },
}
cfg = runtime.resolve(
    "noisefit_on_your_model",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    n_seeds=n_seeds,
    steps=steps,
    noise_std=noise_std,
    accelerate=accelerate,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# To fine-tune your model with NoiseFiT you need four things: a causal language model that
# `transformers` can load, prompt-response pairs, a choice of which decoder blocks get noise, and
# a training loop that runs one clean and two noisy forward passes per step and mixes their losses.
# The library packages the last two as a `Trainer` subclass, so everything `Trainer` does
# (checkpoints, resuming, logging, LoRA models, several processes) works unchanged, and as a
# command line that reads a CSV file.
#
# A real model would need a download and a GPU. So the chapter starts from Part I's base model,
# saves it as an ordinary `save_pretrained` folder, and from then on treats it exactly like a hub
# model: everything below loads it by name. Its facts are known ({ref}`ch-world-we-can-check`),
# so we can also score what fine-tuning did to them, which a real model would not let us do.

# %% [markdown]
# ## The math
#
# For a batch with labels $y$, the clean logits $z_c$ and the logits $z_1, z_2$ of two passes with
# noise on the chosen blocks, NoiseFiT's loss is
#
# $$
# \mathcal L = \alpha\,\mathrm{CE}(z_c, y)
# + (1-\alpha)\,\tfrac12 \sum_{j=1}^{2} \mathrm{KL}\big(p_c^{T} \,\|\, p_j\big)
# + \lambda\, \mathrm{KL}\big(p_2 \,\|\, p_1\big),
# $$ (eq-noisefit-on-your-model-loss)
#
# with $p_c^T = \mathrm{softmax}(z_c / T)$ and $p_j = \mathrm{softmax}(z_j)$, averaged over the
# label positions; the defaults are $\alpha = 0.5$, $\lambda = 0.1$, $T = 1$. The noise on a block's
# output is the adaptive noise of {ref}`ch-adaptive-noise`, with level $\sigma$ (`noise_std`).
# The trainer logs the three terms as `nf_ce`, `nf_soft` and `nf_consistency`, and their sum as
# `nf_total` (the `loss` that `Trainer` reports).
#
# **Claim 1:** with $\alpha = 1$ and $\lambda = 0$ the loss {eq}`eq-noisefit-on-your-model-loss`
# is the plain fine-tuning loss, so `NoiseFiTTrainer` with these settings computes exactly what
# SFT computes.
#
# **Claim 2:** noise is added only inside `NoiseInjector.active()` and only in training mode;
# evaluation and generation see the clean model.
#
# **Claim 3:** the noise of step $t$ is drawn from a generator seeded by (seed, process, $t$), so
# a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
#
# **Cost.** Count a forward pass as 1 unit and its backward as 2. An SFT step costs 3. The default
# NoiseFiT step runs the clean and the first noisy pass with gradient and the second noisy pass
# forward-only (its target is detached), so it costs at least $3 + 3 + 1 = 7$ units:
#
# $$
# \frac{\text{NoiseFiT step}}{\text{SFT step}} \;\ge\; \frac{7}{3} \approx 2.33 \quad
# \text{(compute-bound)}, \qquad \frac{9}{3} = 3 \quad
# \text{(the official code: three passes with gradient)}.
# $$ (eq-noisefit-on-your-model-cost)
#
# On a GPU that is not saturated by one pass the ratio can fall below this bound, because the
# library stacks the passes that need a gradient into one batch.

# %% [markdown]
# ## Implementation
#
# | what | code |
# |---|---|
# | the checkpoint | `AutoModelForCausalLM.from_pretrained(MODEL)`, `AutoTokenizer.from_pretrained(MODEL)` |
# | pairs, tokens, batches | `data.read_pairs`, `data.tokenize_pairs`, `data.CausalCollator` |
# | choose the noisy blocks | `layers.choose_layers(model, "snr" / "auto", ...)`, `calibrate.calibrate_auto` |
# | noise on blocks | `inject.NoiseInjector(model, layers, noise.AdaptiveNoise(sigma))` |
# | $\alpha, \lambda, T, \sigma, k$ | `NoiseFiTConfig(hybrid_loss_alpha, lambda_consistency, temperature, noise_std, num_noise_layers)` |
# | loss {eq}`eq-noisefit-on-your-model-loss`, logging | `NoiseFiTTrainer` (`nf_ce`, `nf_soft`, `nf_consistency`, `nf_ratio_<layer>`) |
# | command line | `python -m noisefit_lib.noisefit train ...`, `... predict ...` |
#
# ### Your checkpoint
#
# We save Part I's base model ({ref}`ch-world-we-can-check`) with `save_pretrained` into a folder
# under `runs/`. That folder is now a checkpoint like any other: `MODEL` is its path.

# %% tags=["nbval-ignore-output", "remove-stderr"]
world, base = facts_llama.base_model(cfg.preset, seed=cfg.seed, device="cpu", progress=True)

# %%
RUN = records.runs_dir() / cfg.chapter / f"{cfg.preset}-seed{cfg.seed}"
shutil.rmtree(RUN, ignore_errors=True)  # a fresh folder: every checkpoint below is this run's
base.model.save_pretrained(RUN / "checkpoint")
base.tokenizer.save_pretrained(RUN / "checkpoint")
MODEL = str(RUN / "checkpoint")
print(sorted(p.name for p in (RUN / "checkpoint").iterdir()))

# %% [markdown]
# Loading it is the line you would write for any model:

# %%
tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).to(cfg.device)
if tokenizer.pad_token is None:  # many hub tokenizers have none; the official code uses EOS
    tokenizer.pad_token = tokenizer.eos_token
print(
    type(model).__name__,
    f"{facts_llama.n_parameters(model):,} parameters,",
    len(inject.find_decoder_layers(model)),
    "decoder blocks, vocabulary",
    len(tokenizer),
)

# %% [markdown]
# On your own model only `MODEL` changes, to a hub id or a local folder; on Colab pick a GPU
# runtime first. For example, with a 135M-parameter instruction model (not run here: it is a
# download):
#
# ```python
# MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # or "meta-llama/Llama-3.2-1B", "./my_model", ...
# tokenizer = AutoTokenizer.from_pretrained(MODEL)
# model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).to("cuda")
# ```
#
# (and `bf16=True` in `TrainingArguments` for mixed precision on the GPU).
#
# The rest of the chapter runs as it is, with two settings to revisit: the prompt template
# (`"chatml_v1"`, the official code's, or `"alpaca"`, instead of `"plain"`, which suits our
# word-level tokenizer) and `num_noise_layers` (3 by default; our checkpoint has only
# {glue:text}`n_blocks` blocks).

# %% [markdown]
# ### Your data
#
# Pairs of prompt and response, here the `sft` questions of chapter 1's world with a share of
# {glue:text}`label_noise` of the answers replaced by a wrong value of the same type (the
# paper's training file also has wrong answers). We write them as a CSV file, the format of the
# command line, and read it back as a user would:

# %%
sft_items = world.sft_items(
    label_noise=cfg.label_noise, generator=runtime.numpy_stream(cfg.seed, "sft-labels")
)
(RUN / "cli").mkdir(parents=True, exist_ok=True)
with open(RUN / "cli" / "train.csv", "w", newline="", encoding="utf-8") as fh:
    writer = csv.DictWriter(fh, fieldnames=["prompt", "response"])
    writer.writeheader()
    writer.writerows(facts.as_pairs(sft_items))
pairs = data.read_pairs(RUN / "cli" / "train.csv")
print(len(pairs), "pairs, e.g.", pairs[0])
_ = report.glue("label_noise", cfg.label_noise)
_ = report.glue("n_blocks", len(inject.find_decoder_layers(model)))

# %% [markdown]
# `tokenize_pairs` formats each pair with a template and tokenises it; `completion_only=True`
# masks the prompt out of the loss (label $-100$), so the model is trained on the answers only.
# `CausalCollator` right-pads a list of examples into a batch:

# %%
TEMPLATE = "plain"
train_tokens = data.tokenize_pairs(tokenizer, pairs, template=TEMPLATE, completion_only=True)
collator = data.CausalCollator(tokenizer.pad_token_id)


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's tensors on the chapter's device."""
    return {name: t.to(cfg.device) for name, t in batch.items()}


batch = to_device(collator(train_tokens[: cfg.batch_size]))
print({name: tuple(t.shape) for name, t in batch.items()})
print(tokenizer.convert_ids_to_tokens(batch["input_ids"][0]))
print(batch["labels"][0].tolist())

# %% [markdown]
# ### Choosing the noisy blocks
#
# v1 of the official code ranks the blocks by a signal-to-noise ratio measured on the first
# training batch and takes the $k$ with the largest (`snr_format="Largest"`, the default) or the
# smallest. {ref}`ch-where-to-inject-noise` showed that this SNR is the inverse of the block's
# hidden-state scale, so "Largest" means the blocks with the smallest activations. v2 instead
# probes each block with noise at five scales, keeps the blocks whose output distribution
# responds most without raising the loss by more than 2 %, and gives each its own $\sigma$.


# %%
def dev_stream(purpose: str) -> torch.Generator:
    """A generator on the model's device, seeded from runtime.stream(seed, purpose)."""
    start = int(torch.randint(0, 2**62, (1,), generator=runtime.stream(cfg.seed, purpose)))
    return torch.Generator(device=cfg.device).manual_seed(start)


snr = nf_layers.choose_layers(
    model,
    "snr",
    batch=batch,
    k=cfg.k,
    sigma=cfg.noise_std,
    generator=runtime.stream(cfg.seed, "snr"),
)
calib_batches = [
    to_device(collator(train_tokens[i : i + cfg.batch_size])) for i in (0, cfg.batch_size)
]  # v2 uses the first two training batches
auto = calibrate.calibrate_auto(model, calib_batches, generator=dev_stream("auto"))
scale = nf_layers.hidden_scale(nf_layers.layer_outputs(model, batch), mask=batch["attention_mask"])
report.show_table(
    [
        {
            "block": i,
            "hidden std": scale[i].item(),
            "v1 SNR": snr.scores[i],
            "v2 score": auto.scores[i],
            "v2 sigma": auto.sigmas.get(i, "-"),
        }
        for i in range(len(scale))
    ]
)
print(
    "v1 (Largest) picks",
    snr.layers,
    "; v2 picks",
    auto.layers,
    "with sigma",
    {i: report.sig(s) for i, s in auto.sigmas.items()},
)

# %% [markdown]
# In the trainer the choice is one setting, `NoiseFiTConfig(layer_selection="snr")` (the default)
# or `"auto"`; `layers=[...]` skips the selection. The trainer makes it on its first batches when
# training starts.
#
# ### The injector
#
# `NoiseInjector` is a context manager that puts forward hooks on the chosen blocks. Noise is off
# until `active()` switches it on, and even then only in training mode. Here is its effect on the
# next-token distributions, measured as the KL divergence from the clean to the noisy
# distribution, averaged over the label positions:


# %%
def mean_kl(clean: torch.Tensor, noisy: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean KL(p_clean || p_noisy) over the positions that predict a label (nats)."""
    keep = labels[:, 1:] != -100
    logp, logq = clean[:, :-1].log_softmax(-1), noisy[:, :-1].log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)[keep].mean().item()


x = {k: v for k, v in batch.items() if k != "labels"}
model.train()  # the noise fires only in training mode (our model has no dropout)
with (
    torch.no_grad(),
    inject.NoiseInjector(
        model, snr.layers, noise.AdaptiveNoise(cfg.noise_std), generator=dev_stream("injector")
    ) as inj,
):
    clean = model(**x).logits
    with inj.active(token_mask=x["attention_mask"]):
        noisy = model(**x).logits
    model.eval()
    with inj.active(token_mask=x["attention_mask"]):
        eval_logits = model(**x).logits
print(
    f"KL(clean || noisy) = {report.sig(mean_kl(clean, noisy, batch['labels']))} nats; "
    f"noise std / hidden std at block {snr.layers}: "
    f"{ {i: report.sig(r, 3) for i, r in inj.noise_ratios().items()} }"
)

# %% [markdown]
# ### The trainer
#
# `NoiseFiTConfig` holds the method's settings; everything else is an ordinary
# `TrainingArguments`. One helper builds the trainer for every run of this chapter: `use_cpu` is
# needed only on a machine without a GPU (it is also what makes several CPU processes use DDP).


# %%
def make_trainer(
    model,
    out: Path,
    *,
    method: str = "noisefit",
    steps: int,
    run_seed: int,
    logging_steps: int = 1,
    save_steps: int = 0,
    dataset: list | None = None,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    **settings,
) -> NoiseFiTTrainer:
    """A NoiseFiTTrainer on `dataset` (default: the training pairs) with this chapter's settings."""
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        logging_steps=logging_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        seed=run_seed,
        use_cpu=cfg.device == "cpu",
        dataloader_pin_memory=False,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
    )
    nf = NoiseFiTConfig(
        method=method, **{"noise_std": cfg.noise_std, "num_noise_layers": cfg.k, **settings}
    )
    return NoiseFiTTrainer(
        model=model,
        args=args,
        train_dataset=dataset or train_tokens,
        data_collator=collator,
        noisefit=nf,
    )


def load_model() -> torch.nn.Module:
    """A fresh copy of the checkpoint, as a user's script would load it."""
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).to(cfg.device)


# %% [markdown]
# A short run that logs every step and saves a checkpoint halfway. The log history holds each
# loss term and the noise-to-hidden ratio of each noisy block:

# %%
demo = make_trainer(
    load_model(),
    RUN / "demo",
    steps=cfg.demo_steps,
    run_seed=cfg.seed,
    save_steps=cfg.demo_steps // 2,
)
demo.train()
TERMS = [
    "loss",
    "nf_ce",
    "nf_soft",
    "nf_consistency",
    *(f"nf_ratio_{i}" for i in demo.choice.layers),
]
report.show_table(
    [
        {"step": h["step"], **{t: h[t] for t in TERMS}}
        for h in demo.state.log_history
        if "loss" in h
    ][:: max(1, cfg.demo_steps // 5)]
)

# %% [markdown]
# Every checkpoint folder has the usual `Trainer` files plus `noisefit.json`, the settings and the
# chosen blocks, which a resumed run reuses instead of choosing again:

# %%
ckpt = RUN / "demo" / f"checkpoint-{cfg.demo_steps // 2}"
saved = json.loads((ckpt / STATE_FILE).read_text())
print(sorted(p.name for p in ckpt.iterdir()))
print(
    "saved choice:",
    saved["choice"]["layers"],
    "| method:",
    saved["config"]["method"],
    "| noise_std:",
    saved["config"]["noise_std"],
)

# %% [markdown]
# Resuming: a new trainer (a new process, say, after a crash) continues from that checkpoint,
# with `trainer.train(resume_from_checkpoint=path)` (or `True` for the last one in `output_dir`):

# %%
resumed = make_trainer(
    load_model(),
    RUN / "resumed",
    steps=cfg.demo_steps,
    run_seed=cfg.seed,
    save_steps=cfg.demo_steps // 2,
)
resumed.train(resume_from_checkpoint=str(ckpt))
gap = max(
    (a - b).abs().max().item()
    for a, b in zip(resumed.model.parameters(), demo.model.parameters(), strict=True)
)
print(
    f"resumed at step {resumed.state.global_step}; "
    f"largest weight difference to the uninterrupted run below 1e-5: {gap < 1e-5}"
)

# %% [markdown]
# ### LoRA
#
# The official code trains LoRA adapters {cite:p}`hu2022lora` (rank 8, $\alpha = 16$, dropout 0.05
# on the query and value projections). Wrap the model with `peft` before handing it to the
# trainer; the decoder blocks are found through the wrapper, and `save_model` writes the adapter
# with `noisefit.json`:

# %%
lora = LoraConfig(
    r=8,
    lora_alpha=16,
    lora_dropout=0.05,
    target_modules=["q_proj", "v_proj"],
    task_type="CAUSAL_LM",
)
lora_model = get_peft_model(load_model(), lora)
trainable, total = lora_model.get_nb_trainable_parameters()
print(
    f"trainable: {trainable:,} of {total:,} parameters ({report.sig(100 * trainable / total, 3)} %)"
)
lora_trainer = make_trainer(lora_model, RUN / "lora", steps=cfg.demo_steps, run_seed=cfg.seed)
lora_trainer.train()
lora_trainer.save_model(str(RUN / "adapter"))
print(sorted(p.name for p in (RUN / "adapter").iterdir()))

# %% [markdown]
# The adapter loads back over the base checkpoint with `PeftModel.from_pretrained`, and
# `merge_and_unload()` folds it into the weights for deployment:

# %%
reloaded = PeftModel.from_pretrained(load_model(), str(RUN / "adapter")).eval()
lora_model.eval()
with torch.no_grad():
    z_trained, z_reloaded = lora_model(**x).logits, reloaded(**x).logits
    z_merged = reloaded.merge_and_unload()(**x).logits
print(
    "reloaded adapter gives the trained logits:",
    torch.allclose(z_trained, z_reloaded, atol=1e-5),
    "| merged:",
    torch.allclose(z_trained, z_merged, atol=1e-4),
)

# %% [markdown]
# ### Predicting
#
# After `train()` the hooks are gone and the model is an ordinary model: generate with it as
# usual. For our world, `answers.evaluate` generates greedy answers and scores them; here are
# three questions about people whose facts the model saw only in pretraining:

# %%
ev = answers.evaluate(demo.model, tokenizer, world, world.split("test_known")[:3])
for item, answer, outcome in zip(ev.items, ev.answers, ev.outcomes, strict=True):
    print(f"{item.prompt} {answer!r:14} truth {item.gold!r:14} {outcome}")

# %% [markdown]
# ### With TRL's `SFTTrainer`
#
# Most chat models are fine-tuned with TRL's `SFTTrainer`, and the official NoiseFiT trainer is a
# subclass of it. So is `NoiseFiTSFTTrainer` (`pip install "noisefit-lib[trl]"`): TRL prepares
# the data as its users expect, from a `datasets.Dataset` with a `text` field, a
# `formatting_func`, `messages` rendered by the tokenizer's chat template, or `prompt` and
# `completion` columns with the loss on the completion only; NoiseFiT then trains on the labels
# TRL built, with the same passes, hooks, logged terms and `noisefit.json` as `NoiseFiTTrainer`.
# Our pairs as a prompt-completion dataset:

# %%
trl_rows = datasets.Dataset.from_list(
    [{"prompt": p["prompt"], "completion": " " + p["response"]} for p in pairs]
)
trl_trainer = NoiseFiTSFTTrainer(
    model=load_model(),
    args=SFTConfig(
        output_dir=str(RUN / "trl"),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.demo_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        dataloader_pin_memory=False,
        max_length=64,
    ),
    train_dataset=trl_rows,
    processing_class=tokenizer,
    noisefit=NoiseFiTConfig(noise_std=cfg.noise_std, num_noise_layers=cfg.k),
)
row = trl_trainer.train_dataset[0]
print(tokenizer.convert_ids_to_tokens(row["input_ids"]))
print(row["labels"])
trl_trainer.train()
trl_logs = [h for h in trl_trainer.state.log_history if "loss" in h]
print("logged terms:", sorted(k for k in trl_logs[-1] if k.startswith("nf_")))
print("noisy blocks:", trl_trainer.choice.layers, "| steps:", trl_trainer.state.global_step)

# %% [markdown]
# The prompt is masked ($-100$) and the completion, with its end of sequence, is the target.
# TRL appends EOS to each completion, and our word-level tokenizer wraps every text in
# `<bos> ... <eos>` of its own, hence the two; a hub tokenizer adds none of its own. A chat
# dataset is one column of `messages` (`[{"role": "user", ...}, {"role": "assistant", ...}]`)
# rendered by the tokenizer's chat template; the test suite trains on one with SmolLM2's real
# tokenizer and checks that only the assistant's turn is a target. TRL's sequence packing
# (`packing=True`, `padding_free=True`) is refused: NoiseFiT stacks the clean and noisy passes of
# each batch, one sequence per row. So is `neftune_noise_alpha`, which would switch on
# transformers' own NEFTune hook and perturb every pass, the clean teacher's too.
#
# ### Mixed precision, 4-bit weights and memory
#
# `bf16=True` (or `fp16=True` on a GPU) trains under autocast with fp32 master weights; the noise
# is drawn in the dtype of the hidden state it is added to, and the losses' softmax over the
# vocabulary is computed in fp32. A CPU with bfloat16 support runs it too, which is how we check
# it here: the same run as `demo` above, in bf16.

# %%
bf16_run = make_trainer(
    load_model(), RUN / "bf16", steps=cfg.demo_steps, run_seed=cfg.seed, bf16=True
)
bf16_run.train()
bf16_logs = [h for h in bf16_run.state.log_history if "loss" in h]
fp32_logs = [h for h in demo.state.log_history if "loss" in h]
finite = all(np.isfinite(h[t]) for h in bf16_logs for t in ("loss", "nf_soft", "nf_consistency"))
bf16_gap = abs(bf16_logs[-1]["loss"] - fp32_logs[-1]["loss"]) / fp32_logs[-1]["loss"]
print("every bf16 loss term finite:", finite)
print("last loss within 5 % of the fp32 run's:", bool(bf16_gap < 0.05))
assert finite and bf16_gap < 0.05

# %% [markdown]
# (The bf16 numbers themselves depend on the CPU's bfloat16 instructions, so only these checks
# are stored.) The paper's runs load the base model in 4-bit NF4 and train LoRA adapters over it
# (QLoRA): the command line's `--load_in_4bit` does that, with double quantisation and bf16
# compute, where CUDA and `bitsandbytes` are present, and refuses in one line elsewhere (shown
# with the command line below). Activation checkpointing (`gradient_checkpointing=True`, TRL's
# default) works too: a checkpointed block is run again in the backward pass, and a noise hook
# inside that replay would add different noise (or none), so the trainer keeps the few noisy
# blocks out of checkpointing; a test checks that a checkpointed run ends with the same weights.

# %% [markdown]
# ### The command line
#
# The same training from a shell needs only the CSV file. We run it as a user would, in the
# folder with the data, as a separate Python process (`sys.executable -m noisefit_lib.noisefit`).
# The `smoke` preset calls the same entry point, `cli.main`, inside this process instead, to save
# the two interpreter start-ups (each imports `torch` and `transformers`: several CPU seconds).


# %%
def run_cli(*args: str, cwd: Path = RUN / "cli") -> tuple[int, str, str]:
    """Run `python -m noisefit_lib.noisefit ARGS` in `cwd`; return (status, stdout, stderr)."""
    if not cfg.cli_subprocess:
        out, err = io.StringIO(), io.StringIO()
        here = Path.cwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli.main(list(args))
        finally:
            os.chdir(here)
        return status, out.getvalue(), err.getvalue()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "noisefit_lib.noisefit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return res.returncode, res.stdout, res.stderr


# %% [markdown]
# `train` on the CSV file, with LoRA (the default) and the checkpoint folder as `--model`. Every
# option is declared once, from dataclasses, by transformers' `HfArgumentParser`: NoiseFiT's
# settings (the fields of `NoiseFiTConfig`), every `TrainingArguments` flag (`--bf16`,
# `--warmup_steps`, `--eval_strategy` with `--eval_data`, `--report_to tensorboard`, ...), and
# the model, data and LoRA options. They can come from a YAML file, `--config run.yaml`, with
# flags on the command line taking precedence; this run keeps its settings in one:

# %%
run_config = {
    "model": "../checkpoint",
    "train_data": "train.csv",
    "output_dir": "nf",
    "template": TEMPLATE,
    "completion_only": True,
    "batch_size": cfg.batch_size,
    "max_steps": cfg.cli_steps,
    "learning_rate": 1e-3,
    "logging_steps": 5,
    "num_noise_layers": cfg.k,
    "seed": cfg.seed,
}
(RUN / "cli" / "train.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
print((RUN / "cli" / "train.yaml").read_text())
status, out, err = run_cli("train", "--config", "train.yaml")
assert status == 0, err[-2000:]
summary = json.loads(out.strip().splitlines()[-1])  # the last line: a JSON summary
print("steps:", summary["steps"], "| noisy blocks:", summary["layers"])
print("logged:", sorted(summary["last_log"]))
print(
    "written:",
    sorted(p.name for p in (RUN / "cli" / "nf").iterdir() if not p.name.startswith("checkpoint")),
)

# %% [markdown]
# The printed log lines (one per `--logging_steps`) and the summary hold timings and paths, so we
# show only the stable parts. `predict` reads a CSV with a `prompt` column and writes one row per
# prompt and sample:

# %%
test_items = world.split("test_known")
with open(RUN / "cli" / "test.csv", "w", newline="", encoding="utf-8") as fh:
    writer = csv.DictWriter(fh, fieldnames=["prompt"])
    writer.writeheader()
    writer.writerows({"prompt": it.prompt} for it in test_items)
status, out, err = run_cli(
    "predict",
    "--model",
    "nf",
    "--test_data",
    "test.csv",
    "--output",
    "pred.csv",
    "--template",
    TEMPLATE,
    "--max_new_tokens",
    "4",
    "--batch_size",
    "64",
)
assert status == 0, err[-2000:]
with open(RUN / "cli" / "pred.csv", newline="", encoding="utf-8") as fh:
    predictions = list(csv.DictReader(fh))
print(len(predictions), "rows with columns", list(predictions[0]))

# %% [markdown]
# Scored against the world, the CLI's answers to the `test_known` questions. `--seed` fixes
# everything the command does, the initialisation of the LoRA adapter included, so two runs of
# the same command give the same answers (a test checks it):

# %%
print(predictions[0])
cli_outcomes = [
    world.score(p["response"], it) for p, it in zip(predictions, test_items, strict=True)
]
print("test_known answers of the CLI's model:", facts.outcome_counts(cli_outcomes))

# %% [markdown]
# A file with a wrong header gets one line that says what is wrong, and exit status 2, before
# any model is loaded:

# %%
(RUN / "cli" / "bad.csv").write_text("prompt,answer\nQ: Where was X born ? A:,Temvantiv .\n")
status, out, err = run_cli(
    "train", "--model", "../checkpoint", "--train_data", "bad.csv", "--output_dir", "nf_bad"
)
print("exit status", status)
print(err.strip())

# %% [markdown]
# and so does an option this machine cannot run, such as the paper's 4-bit weights without a
# GPU:

# %%
status_4bit, _, err_4bit = run_cli("train", "--config", "train.yaml", "--load_in_4bit")
print("exit status", status_4bit)
print(err_4bit.strip() if status_4bit else "4-bit loading is available here (a CUDA machine)")

# %% [markdown]
# `--profile paper` sets the official run's settings in one flag (gradient accumulation 4, so an
# effective batch of 16, 1,000 steps, sequence length 1,024, a checkpoint per epoch, LoRA on the
# query and value projections; for `predict`, five sampled answers with repetition penalty
# {glue:text}`paper_repetition_penalty`); the defaults' departures from it, and why, are listed
# on {doc}`/book/noisefit_library`. Any flag given with it still wins:

# %%
script_args, nf_args, train_args = cli.parse(
    "train",
    ["--config", str(RUN / "cli" / "train.yaml"), "--profile", "paper", "--max_steps", "20"],
)
print(
    "gradient accumulation:", train_args.gradient_accumulation_steps,
    "| max_steps:", train_args.max_steps,
    "| save_strategy:", train_args.save_strategy.value,
    "| max_length:", script_args.max_length,
)  # fmt: skip
_ = report.glue("paper_repetition_penalty", cli.PROFILES["predict"]["paper"]["repetition_penalty"])

# %% [markdown]
# ### Several GPUs
#
# `NoiseFiTTrainer` runs under `accelerate launch`: each process trains on its share of every
# batch, process 0 chooses the noisy blocks and broadcasts them, and DDP keeps the replicas equal.
# On a machine with 4 GPUs:
#
# ```bash
# accelerate launch --multi_gpu --num_processes 4 -m noisefit_lib.noisefit train \
#     --model HuggingFaceTB/SmolLM2-135M-Instruct --train_data train.csv --output_dir runs/nf
# ```
#
# and a script that builds the trainer as above runs with
# `accelerate launch --multi_gpu --num_processes 4 my_script.py`. On a CPU-only machine the same
# command with `--num_processes 2` starts two `gloo` processes (`TrainingArguments(use_cpu=True)`
# is then required; the CLI sets it). That works, and the library's tests check it, but here it
# would cost about 20 s of CPU time for 10 steps (three interpreters importing `torch` and
# `transformers`), a third of the chapter's budget, so the `book` preset only shows the command.
# `accelerate=True` (the `full` preset) runs it, on the CPU with two processes:

# %% tags=["nbval-ignore-output"]
if cfg.accelerate:
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "noisefit_lib.noisefit",
        "train",
        "--model",
        "../checkpoint",
        "--train_data",
        "train.csv",
        "--output_dir",
        "nf_ddp",
        "--template",
        TEMPLATE,
        "--batch_size",
        "8",
        "--max_steps",
        "10",
        "--num_noise_layers",
        str(cfg.k),
        "--logging_steps",
        "5",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    res = subprocess.run(
        launch, cwd=RUN / "cli", env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [
        json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"output_dir"')
    ]
    print(
        f"{len(ranks)} processes, each at step {[r['steps'] for r in ranks]}, noisy blocks "
        f"{[r['layers'] for r in ranks]}, {time.perf_counter() - start:.0f} s"
    )
else:
    print("accelerate launch not run in this preset (set accelerate=True to run it)")

# %% [markdown]
# ## Checks
#
# The v1 SNR ranks the blocks in reverse order of their hidden-state scale
# ({ref}`ch-where-to-inject-noise`):

# %%
if len(scale) > 1:
    assert nf_layers.top_k(torch.tensor(snr.scores), cfg.k) == nf_layers.top_k(-scale, cfg.k)
assert snr.layers == demo.choice.layers  # the trainer chose the same blocks on the same batch
assert set(auto.sigmas) == set(auto.layers)
print("layer choice checks passed")

# %% [markdown]
# Claim 2: inside `active()` the logits change; in eval mode, or after the `with` block, they are
# the clean ones, and no hook of ours is left on the model:

# %%
model.train()
with torch.no_grad():
    after = model(**x).logits
hooks = [
    h
    for b in inject.find_decoder_layers(model)
    for h in b._forward_hooks.values()
    if h.__module__.startswith("noisefit_lib")
]
assert not torch.allclose(clean, noisy) and torch.equal(clean, eval_logits)
assert torch.equal(clean, after) and hooks == []
prompt = torch.tensor(answers.prompt_ids(tokenizer, [test_items[0].prompt]), device=cfg.device)
greedy = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
with inject.NoiseInjector(model, snr.layers, noise.AdaptiveNoise(10.0)) as inj, inj.active():
    inside = model.generate(prompt, **greedy)  # train mode, noise on, and a huge sigma
assert torch.equal(inside, model.generate(prompt, **greedy)) and inj.calls == 0
print("claim 2 holds")

# %% [markdown]
# Claim 1: with $\alpha = 1$, $\lambda = 0$ the trainer's loss equals the SFT trainer's loss on the
# same batch and weights, and equals the cross-entropy that `transformers` computes itself:

# %%
same = load_model().train()
losses = {}
for method, settings in (
    ("sft", {}),
    ("noisefit", {"hybrid_loss_alpha": 1.0, "lambda_consistency": 0.0}),
):
    tr = make_trainer(same, RUN / "claim1", method=method, steps=1, run_seed=cfg.seed, **settings)
    tr.setup_noise()
    with torch.no_grad():
        losses[method] = tr.compute_loss(same, batch).item()
    tr.teardown_noise()
with torch.no_grad():
    hf_loss = same(**batch).loss.item()
assert abs(losses["sft"] - losses["noisefit"]) < 1e-6 and abs(losses["sft"] - hf_loss) < 1e-5
print("claim 1 holds:", {k: report.sig(v) for k, v in losses.items()})

# %% [markdown]
# Claim 3 was checked above (the resumed run); the CLI wrote an adapter, answered every prompt,
# and rejected the bad file with status 2 and one line:

# %%
assert summary["steps"] == cfg.cli_steps and (RUN / "cli" / "nf" / "adapter_config.json").is_file()
assert len(predictions) == len(test_items) and gap < 1e-5
assert status == 2 and err.count("\n") == 1 and "missing column(s) response" in err
print("claim 3 and command-line checks passed")

# %% [markdown]
# ## Experiment
#
# Does NoiseFiT change what fine-tuning does to the model's knowledge? We fine-tune the whole
# checkpoint (no LoRA: the model is tiny) on the noisy `sft` pairs with plain SFT and with NoiseFiT
# at two noise levels: the library default $\sigma$ = {glue:text}`noise_std` and a larger
# $\sigma$ = {glue:text}`big_noise_std` (otherwise the defaults: $\alpha = 0.5$,
# $\lambda = 0.1$, v1's SNR choice of {glue:text}`k` block(s)). Every run starts from the same
# checkpoint, with the same data order, learning rate and number of steps; each seed draws its own
# noisy labels. We then ask three kinds of question:
#
# - `sft`: the training questions, scored against the truth (a model that learned a wrong label
#   gets that question "hallucinated");
# - `test_known`: other facts of known people, seen only in pretraining: the paper's setting;
# - `test_unknown`: people the model has never seen, where any answer is a hallucination.

# %%
seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
RUNS = {
    "sft": ("sft", cfg.noise_std),
    "noisefit": ("noisefit", cfg.noise_std),
    f"noisefit, sigma {cfg.big_noise_std}": ("noisefit", cfg.big_noise_std),
}  # label: method, sigma
NF_BIG = f"noisefit, sigma {cfg.big_noise_std}"
SPLITS = ("sft", "test_known", "test_unknown")
_ = report.glue("noise_std", cfg.noise_std)
_ = report.glue("big_noise_std", cfg.big_noise_std)
_ = report.glue("k", cfg.k)
print(
    f"preset {cfg.preset}: seeds {seeds}, runs {list(RUNS)}, {cfg.steps} steps of "
    f"{cfg.batch_size} pairs, lr {cfg.lr}, label noise {cfg.label_noise}"
)


# %%
def fine_tune(label: str, run_seed: int) -> tuple[dict, list[dict], float]:
    """Fine-tune a fresh copy as run `label` on this seed's noisy labels.

    Returns the outcome counts per split, the logged losses and the CPU seconds of `train()`.
    """
    method, sigma = RUNS[label]
    items = world.sft_items(
        label_noise=cfg.label_noise, generator=runtime.numpy_stream(run_seed, "sft-labels")
    )
    tokens = data.tokenize_pairs(
        tokenizer, facts.as_pairs(items), template=TEMPLATE, completion_only=True
    )
    tr = make_trainer(
        load_model(),
        RUN / "experiment",
        method=method,
        steps=cfg.steps,
        dataset=tokens,
        run_seed=run_seed,
        logging_steps=max(1, cfg.steps // 10),
        noise_std=sigma,
    )
    start = time.process_time()
    tr.train()
    cpu = time.process_time() - start
    counts = {
        s: answers.evaluate(tr.model, tokenizer, world, world.split(s), batch_size=512).counts()
        for s in SPLITS
    }
    return counts, [h for h in tr.state.log_history if "loss" in h], cpu


# %% [markdown]
# The runs (the CPU time of each `train()` call is recorded, for the cost comparison below):

# %%
runs = {(label, s): fine_tune(label, s) for s in seeds for label in RUNS}
base_counts = {
    s: answers.evaluate(
        base.model.to(cfg.device), tokenizer, world, world.split(s), batch_size=512
    ).counts()
    for s in SPLITS
}
for (label, s), (counts, _, _) in runs.items():
    print(
        f"{label:20} seed {s}: "
        + "; ".join(f"{split} {c['correct']}/{c['hallucinated']}" for split, c in counts.items()),
        "(correct/hallucinated)",
    )

# %% [markdown]
# One row per (run, seed, split) with the rate of each outcome: the table the results file
# stores and everything below is computed from. The base checkpoint is one fixed model, so it has
# one row per split (seed `-1`).


# %%
def clean(est: stats.Estimate) -> stats.Estimate:
    """``est`` with mean and bounds rounded to 12 decimals.

    Differences of rates carry float noise of order 1e-17 (a zero difference prints as 2.8e-17);
    rounding removes it, so that stored outputs compare across machines.
    """
    return dataclasses.replace(
        est, mean=round(est.mean, 12), low=round(est.low, 12), high=round(est.high, 12)
    )


def score_table(run_list: list[dict], base: dict | None = None) -> pd.DataFrame:
    """Outcome rates per (label, seed, split) from the runs (and the base model's counts)."""
    out = []
    sources = [(r["label"], r["seed"], r["counts"]) for r in run_list]
    if base is not None:
        sources.insert(0, ("base", -1, base))
    for label, seed_, counts in sources:
        for split, c in counts.items():
            n = sum(c.values())
            out.append({"label": label, "seed": seed_, "split": split, "answers": n,
                        **{k: c[k] / n for k in facts.OUTCOMES}})  # fmt: skip
    return pd.DataFrame(out)


run_list = [
    {"label": label, "method": RUNS[label][0], "noise_std": RUNS[label][1], "seed": s,
     "counts": c, "log_history": logs, "train_cpu_seconds": cpu}
    for (label, s), (c, logs, cpu) in runs.items()
]  # fmt: skip
scores = score_table(run_list, base_counts)
results = {
    "seeds": seeds,
    "runs_config": {k: list(v) for k, v in RUNS.items()},
    "splits": list(SPLITS),
    "base_counts": base_counts,
    "runs": run_list,
    "scores": scores,
    "cli": {
        "steps": summary["steps"],
        "layers": summary["layers"],
        "test_known": facts.outcome_counts(cli_outcomes),
    },
    "layer_choice": {
        "snr": snr.layers,
        "snr_scores": snr.scores,
        "auto": auto.layers,
        "auto_sigmas": auto.sigmas,
    },
}

# %% tags=["nbval-ignore-output"]
records.save(cfg, results)

# %% [markdown]
# ## Results
#
# Outcome rates per split: the mean over the {glue:text}`n_seeds_text` training seeds with its
# 95 % $t$-interval over the seeds (the book's unit of replication, {doc}`/book/contributing`;
# `n/a` with a single seed). The base checkpoint is one fixed model, so it has a rate and no
# interval:

# %%
long = scores.melt(
    id_vars=["label", "seed", "split"], value_vars=list(facts.OUTCOMES), var_name="outcome"
)
rates = stats.summarise(long, "value", by=["split", "label", "outcome"])
rates["text"] = [stats.estimate_of(r).text() for _, r in rates.iterrows()]
means = rates.pivot(index=["split", "label"], columns="outcome", values="mean")[
    list(facts.OUTCOMES)
]
texts = rates.pivot(index=["split", "label"], columns="outcome", values="text")
shown = means.join(texts[["correct", "hallucinated"]].add_suffix(" [95 %, seeds]"))
order = pd.MultiIndex.from_product([SPLITS, ["base", *RUNS]], names=["split", "label"])
report.show_table(shown.reindex(order).reset_index(), digits=3)

# %%
STYLE = {"base": plotting.style(6), "sft": plotting.method_style("sft"),
         "noisefit": plotting.method_style("noisefit"), NF_BIG: plotting.style(3)}  # fmt: skip
fig, (ax_loss, ax_out) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
curves = [
    ("sft", "nf_ce", "SFT: CE", "-"),
    ("noisefit", "nf_ce", "NoiseFiT: CE", "-"),
    *(
        (lab, t, f"{name}: {t[3:]} KL", ls)
        for lab, name in (("noisefit", "NoiseFiT"), (NF_BIG, f"sigma {cfg.big_noise_std}"))
        for t, ls in (("nf_soft", "--"), ("nf_consistency", ":"))
    ),
]
for label, term, text, ls in curves:
    logs = [runs[(label, s)][1] for s in seeds]
    y = np.array([[h[term] for h in log] for log in logs])
    steps_x = [h["step"] for h in logs[0]]
    ax_loss.plot(steps_x, y.mean(0), label=text, color=STYLE[label]["color"], linestyle=ls)
    ax_loss.fill_between(steps_x, y.min(0), y.max(0), color=STYLE[label]["color"], alpha=0.2)
ax_loss.set(xlabel="optimiser step", ylabel="loss term (nats/token)", yscale="log")
ax_loss.legend(fontsize=7, ncols=2)
labels = ["base", *RUNS]
width = 0.8 / len(labels)
by_rate = rates.set_index(["label", "split", "outcome"])
for j, label in enumerate(labels):
    for k, (kind, hatch) in enumerate((("correct", ""), ("hallucinated", "//"))):
        pos = np.arange(len(SPLITS)) * 2 + k + (j - (len(labels) - 1) / 2) * width
        est = [stats.estimate_of(by_rate.loc[(label, split, kind)]) for split in SPLITS]
        yerr = [[e.mean - e.low for e in est], [e.high - e.mean for e in est]]
        ax_out.bar(pos, [e.mean for e in est], width, hatch=hatch, color=STYLE[label]["color"],
                   yerr=yerr if est[0].n >= 3 else None, capsize=2, edgecolor="white",
                   label=label if k == 0 else None)  # fmt: skip
        if label != "base":  # the single seeds
            for p, split in zip(pos, SPLITS, strict=True):
                sel = (scores["label"] == label) & (scores["split"] == split)
                ax_out.plot([p] * int(sel.sum()), scores.loc[sel, kind], "k.", markersize=3)
ax_out.set_xticks(
    [2 * i + 0.5 for i in range(len(SPLITS))],
    [f"{s}\ncorrect | halluc. (//)" for s in SPLITS],
    fontsize=8,
)
ax_out.set(ylabel="fraction of answers", ylim=(0, 1.25))
ax_out.legend(ncols=4, fontsize=8, loc="upper center")
report.glue_figure("fig-noisefit-on-your-model-runs", fig)

# %% [markdown]
# ```{glue:figure} fig-noisefit-on-your-model-runs
# :name: fig-noisefit-on-your-model-runs
#
# Left: the loss terms that NoiseFiTTrainer logs (nats per label token, log scale; mean over
# seeds, band: range over seeds): the CE of SFT and of NoiseFiT's clean pass, and NoiseFiT's two
# KL terms at both noise levels. Right: correct and hallucinated answers of the base checkpoint
# and each run per split, the mean over seeds (bars) and the single seeds (dots); error bars are
# 95 % $t$-intervals over seeds, drawn with at least three seeds (the `full` preset). The CE
# curves of SFT and NoiseFiT overlap.
# ```
#
# The differences that matter, each NoiseFiT run minus SFT, paired by seed (same labels, same
# data order), with a 95 % $t$-interval over the seeds:

# %%
runs_only = long[long["label"] != "base"]
effects = stats.paired_effects(
    runs_only, "value", "sft", method="label", by=["split", "outcome"]
).round({"mean": 12, "low": 12, "high": 12})  # float noise of 1e-17: see `clean`
effects = effects[effects["outcome"].isin(["correct", "hallucinated"])].copy()
effects["NoiseFiT - SFT [95 %, seeds]"] = [
    stats.estimate_of(r).text() for _, r in effects.iterrows()
]
report.show_table(effects[["label", "split", "outcome", "NoiseFiT - SFT [95 %, seeds]"]])

# %% [markdown]
# **The claims as tests.** The paper's claim is that NoiseFiT beats SFT on held-out facts; we
# judge it with the book's one rule ({doc}`/book/contributing`): `reproduced` when the 95 %
# interval over seeds excludes zero in NoiseFiT's favour, `contradicted` when it excludes zero
# against it, `no detectable effect` when it includes zero and lies within ±0.02, and
# `inconclusive` otherwise. The smallest effect of interest, **0.02** (two percentage points of a
# split), is a quarter of the +7.7 points of accuracy the project page reports for NoiseFiT, and
# about the smallest change a user comparing two models on a few hundred questions would notice.
# The same function judges the `book` run and a committed `full` run.

# %%
SESOI = 0.02  # a fraction of a split; justified in the text


def claims(table: pd.DataFrame) -> pd.DataFrame:
    """Estimate and verdict of each claim from a (label, seed, split) table of rates."""
    tests = {  # claim: (run, split, outcome, expected sign); effect = run - SFT
        "known": ("noisefit", "test_known", "correct", "increase"),
        "unknown": ("noisefit", "test_unknown", "hallucinated", "decrease"),
        "known_big": (NF_BIG, "test_known", "correct", "increase"),
        "hall_known": ("noisefit", "test_known", "hallucinated", "decrease"),
        "acc_sft": ("noisefit", "sft", "correct", "increase"),
        "hall_known_big": (NF_BIG, "test_known", "hallucinated", "decrease"),
        "hall_unknown_big": (NF_BIG, "test_unknown", "hallucinated", "decrease"),
    }
    out = []
    for claim, (label, split, outcome, expected) in tests.items():
        sub = table[(table["split"] == split) & (table["label"] != "base")]
        wide = sub.pivot(index="seed", columns="label", values=outcome)
        est = clean(stats.paired_difference(wide[label], wide["sft"]))
        verdict = verdicts.judge(est, expected=expected, sesoi=SESOI)
        out.append({"claim": claim, **est.as_dict(), "text": est.text(), "verdict": verdict})
    return pd.DataFrame(out).set_index("claim")


book_claims = claims(scores)
report.show_table(book_claims.reset_index()[["claim", "text", "verdict"]])
mean_rate = rates.set_index(["label", "split", "outcome"])["mean"]
last = [runs[("noisefit", s)][1][-1] for s in seeds]
recipe_ok = bool(
    torch.allclose(z_trained, z_reloaded, atol=1e-5)
    and torch.allclose(z_trained, z_merged, atol=1e-4)
)
report.glue_all({
    **{f"d_{k}": book_claims.loc[c, "text"] for k, c in (
        ("acc_known", "known"), ("hall_unknown", "unknown"), ("acc_known_big", "known_big"),
        ("hall_known", "hall_known"), ("acc_sft", "acc_sft"), ("hall_known_big", "hall_known_big"),
        ("hall_unknown_big", "hall_unknown_big"))},
    "base_acc_known": mean_rate[("base", "test_known", "correct")],
    "sft_acc_known": mean_rate[("sft", "test_known", "correct")],
    "base_acc_sft": mean_rate[("base", "sft", "correct")],
    "sft_acc_sft": mean_rate[("sft", "sft", "correct")],
    "big_malformed_unknown": mean_rate[(NF_BIG, "test_unknown", "malformed")],
    "soft_over_ce": float(np.mean([h["nf_soft"] / h["nf_ce"] for h in last])),
    "book_verdict_known": book_claims.loc["known", "verdict"],
    "book_verdict_known_big": book_claims.loc["known_big", "verdict"],
    "n_seeds_text": str(len(seeds)),
    "verdict_recipe": verdicts.check(recipe_ok),
    "verdict_cost": verdicts.not_tested("the paper reports no cost"),
}, digits=3)  # fmt: skip

# %% [markdown]
# Fine-tuning did what it was asked on the training questions: right answers on `sft` went from
# {glue:text}`base_acc_sft` for the base checkpoint to {glue:text}`sft_acc_sft` after SFT (the
# wrong labels cap it), and NoiseFiT at the default $\sigma$ changed that by
# {glue:text}`d_acc_sft`. The price is paid on the facts that were not fine-tuned: on
# `test_known` the base checkpoint was right at a rate of {glue:text}`base_acc_known` and SFT at
# {glue:text}`sft_acc_known`. Fine-tuning on one set of facts overwrote part of what the model
# knew about others, the effect that {cite:t}`gekhman2024finetuning` describe.
#
# NoiseFiT at the default $\sigma$ moved the `test_known` accuracy by {glue:text}`d_acc_known`
# and its hallucination rate by {glue:text}`d_hall_known` (minus SFT, 95 % interval over seeds).
# The paper counts every answer its judge finds incorrect as a hallucination, so its measure is
# the accuracy: *{glue:text}`book_verdict_known`*. The left panel shows why so little happens: at
# this $\sigma$ the soft KL term is {glue:text}`soft_over_ce` times the CE at the end of
# training, so NoiseFiT's gradient is essentially half of SFT's. At $\sigma$ =
# {glue:text}`big_noise_std` the KL terms are far larger, about as large as the CE by the end of
# training; the `test_known` accuracy moved by {glue:text}`d_acc_known_big`
# (*{glue:text}`book_verdict_known_big`*) and our narrower hallucination rate (a wrong value of
# the right type) by {glue:text}`d_hall_known_big`. About people the model never saw, the default
# run changed the hallucination rate by {glue:text}`d_hall_unknown` and the large-$\sigma$ run by
# {glue:text}`d_hall_unknown_big`, with a malformed-answer rate of
# {glue:text}`big_malformed_unknown`: noise can make the model less sure of the answer format,
# not more willing to say `unknown`, which nothing in the training data teaches.

# %% [markdown]
# ### Cost per step
#
# The CPU time of the `train()` calls above, NoiseFiT over SFT (the same steps, model and data;
# it varies from run to run, so this cell's output is not checked):

# %% tags=["nbval-ignore-output"]
cpu = {label: np.mean([runs[(label, s)][2] for s in seeds]) for label in RUNS}
glued = report.glue_all(
    {"cpu_ratio": cpu["noisefit"] / cpu["sft"], "cpu_ratio_big": cpu[NF_BIG] / cpu["sft"]},
    digits=2,
)
print(f"NoiseFiT / SFT CPU time per run: {glued['cpu_ratio']}x ({cfg.steps} steps, "
      f"{len(seeds)} seed(s))")  # fmt: skip

# %% [markdown]
# The library's benchmark (`tools/bench_noisefit.py`, see {doc}`/book/noisefit_library`) timed one
# training step of each method on a 138M-parameter Llama on an NVIDIA H200; its results file is
# committed with the book:

# %%
BENCH = records.RESULTS_DIR / "bench_noisefit_h200.json"  # committed with the library
if BENCH.is_file():
    bench = json.loads(BENCH.read_text())
    bench_rows = pd.DataFrame(
        {"benchmark row": name, "noisy blocks": ",".join(map(str, m["layers"])) or "-",
         "median ms / step": m["median_ms"], "x SFT": m["ratio_vs_sft"]}
        for name, m in bench["methods"].items()
    )  # fmt: skip
    report.show_table(bench_rows, digits=3)
    gpu = bench_rows.set_index("benchmark row")["x SFT"]
    gpu_default, gpu_faithful = gpu["noisefit"], gpu["noisefit_faithful_v1"]
    gpu_name = bench["device_name"]
else:  # a copy of the library without its results folder
    print("noisefit_lib/results/bench_noisefit_h200.json not found; see the library page")
    gpu_default = gpu_faithful = "(not available)"
    gpu_name = "-"
report.glue_all(
    {"gpu_default": gpu_default, "gpu_faithful": gpu_faithful, "gpu_name": gpu_name}, digits=3
)

# %% [markdown]
# On the GPU the default NoiseFiT step costs {glue:text}`gpu_default` SFT steps, below the
# compute-bound floor {eq}`eq-noisefit-on-your-model-cost` of 2.33 because the passes with
# gradient run as one stacked batch, which a GPU that one pass does not saturate absorbs; the
# official code's three passes with gradient (`faithful=True`) cost {glue:text}`gpu_faithful`.
# A CPU is compute-bound and gains nothing from stacking: the library's page measures 2.35 to 2.56
# SFT steps per default NoiseFiT step on a 4.5M-parameter model, about the floor. The ratio of the
# whole `train()` calls of this run, {glue:text}`cpu_ratio`, is not a per-step measurement: on a
# model this small the fixed costs of a step (data, optimiser, `Trainer` bookkeeping) are a large
# share, and the shared machine makes it move from run to run.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# | claim | paper {cite:p}`khadangi2025noise` | ours, `book` | ours, `full` | verdict |
# |---|---|---|---|---|
# | NoiseFiT hallucinates less than standard fine-tuning on held-out facts (the paper: fewer answers judged incorrect) | "significantly reduces hallucination rates" (abstract); numbers not verified | `test_known` accuracy, NoiseFiT − SFT: {glue:text}`d_acc_known` ($\sigma$ = {glue:text}`noise_std`), {glue:text}`d_acc_known_big` ($\sigma$ = {glue:text}`big_noise_std`, {glue:text}`book_verdict_known_big`) | {glue:text}`full_d_acc_known` ($\sigma$ = {glue:text}`noise_std`) | {glue:text}`verdict_known` |
# | ... and hallucinates less about people it cannot know | not reported in what we could read | `test_unknown` hallucination, NoiseFiT − SFT: {glue:text}`d_hall_unknown` | {glue:text}`full_d_hall_unknown` | {glue:text}`verdict_unknown` |
# | cost of a step | not reported in what we could read; the official code runs three passes with gradient | {glue:text}`gpu_faithful` x SFT for the official code's passes, {glue:text}`gpu_default` x for the library default ({glue:text}`gpu_name`) | same file | {glue:text}`verdict_cost` |
# | the recipe applies to a causal LM loaded with `from_pretrained`, with LoRA | models of five families, LoRA (official code) | the same code path on a saved checkpoint; the LoRA adapter, saved and reloaded, gives the trained logits | 34M-parameter checkpoint | {glue:text}`verdict_recipe` |
#
# The first two verdicts are computed from the paired differences at the default $\sigma$, with
# the rule and the smallest effect of interest (0.02) of the Results section; the `full` run takes
# over where one is committed. The last row is an exact check (`holds` or `fails`) of the code
# path, not of the paper's claim for five model families. Our world is tiny and our checkpoint
# has {glue:text}`n_blocks` decoder blocks, so this is a check of the recipe on a model we can
# score exactly, not of the paper's numbers; Part I's end-to-end chapter runs the full comparison
# with its baselines.

# %% [markdown]
# (noisefit-on-your-model-full-scale)=
# ## Full-scale results
#
# The `full` preset runs the same notebook on one GPU with the `full` base model of chapter 1 (a
# 34M-parameter Llama with 8 blocks on a 5,000-person world), three noisy blocks, 400 steps of
# 32 pairs and three seeds, and the two-process `accelerate launch` on the CPU. This section
# never recomputes it: it reads the committed results file if there is one and judges it with
# the same `claims` function. {glue:text}`full_status`

# %%
full = records.committed(cfg.chapter, "full")
print(records.status(full, cfg.chapter, "full"))
full_claims = None if full is None else claims(full.table("scores"))
if full_claims is not None:
    report.show_table(full_claims.reset_index()[["claim", "text", "verdict"]])
final = book_claims if full_claims is None else full_claims  # the full run decides
report.glue_all({
    "full_status": records.status(full, cfg.chapter, "full"),
    "full_d_acc_known": "not run" if full_claims is None else full_claims.loc["known", "text"],
    "full_d_hall_unknown": "not run" if full_claims is None else full_claims.loc["unknown", "text"],
    "verdict_known": final.loc["known", "verdict"],
    "verdict_unknown": final.loc["unknown", "verdict"],
})  # fmt: skip

# %% [markdown]
# ## Summary
#
# - A checkpoint folder and a hub id are the same thing to `from_pretrained`: change `MODEL`, the
#   template and `num_noise_layers`, and the chapter runs on your model.
# - `NoiseFiTTrainer` is a `Trainer`: `TrainingArguments`, checkpoints, `resume_from_checkpoint`,
#   `peft` models and `accelerate launch` work as usual; the loss terms are logged as `nf_*`, and
#   the chosen blocks travel with every checkpoint in `noisefit.json`.
# - The command line does the same from a CSV file and fails with one readable line on bad input.
# - On this checkpoint, NoiseFiT at the default $\sigma$ changed the accuracy on held-out facts by
#   {glue:text}`d_acc_known` against SFT ({glue:text}`verdict_known`); a larger $\sigma$ gave
#   {glue:text}`d_acc_known_big` ({glue:text}`book_verdict_known_big`). Fine-tuning itself, with
#   either method, cost the model part of what it knew.
# - A default NoiseFiT step costs {glue:text}`gpu_default` SFT steps on an H200, and about the
#   compute-bound floor of 2.33 on a CPU.
#
# ## Exercises
#
# 1. *Run it on a real model:* on Colab with a GPU, set
#    `MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"`, write a CSV of 50 questions and answers
#    about your own domain, and run the command line with `--template chatml_v1 --max_steps 200`.
#    Which blocks does `--layer_selection snr` pick, and which does `auto` pick?
# 2. *Run a regime:* repeat the experiment with `-p noise_std 1.0` and `-p noise_std 2.0`. When do
#    the KL terms of the left panel reach the size of the CE, and what happens to `test_known`?
# 3. *Why* does the resumed run end with the same weights as the uninterrupted one? What would
#    break it if the noise were drawn from the global random generator?
# 4. *Change the code:* train with LoRA in the experiment (wrap `load_model()` with
#    `get_peft_model`). Does fine-tuning still overwrite the `test_known` facts?
#
# :::{dropdown} Hint for exercise 3
# The trainer reseeds its noise generator from (seed, process, step) before every step, and
# `Trainer` restores the data order and the optimiser state from the checkpoint; with a global
# generator the noise after resuming would depend on everything drawn before.
# :::
#
# ## Further reading
#
# - {doc}`/book/noisefit_library`: every option of the library, the trainer and the command line.
# - {cite:t}`khadangi2025noise`: NoiseFiT.
# - {cite:t}`hu2022lora`: LoRA, the adapters the official code trains.
# - {cite:t}`gekhman2024finetuning`: why fine-tuning on new facts can increase hallucination.
