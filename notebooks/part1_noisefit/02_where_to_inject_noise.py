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
# (ch-where-to-inject-noise)=
# # Where to inject noise
#
# **Claim.** NoiseFiT "selectively perturbs layers identified as either high-SNR (more robust)
# or low-SNR (potentially under-regularized)" {cite:p}`khadangi2025noise`: a signal-to-noise
# ratio measured per decoder layer decides where the noise goes.
#
# In this chapter we
# - write out the official (v1) SNR estimator, implement it from scratch and prove it equal to
#   the library's `snr_v1`;
# - derive what it measures: a closed form with no randomness left, which is the inverse of the
#   layer's hidden-state scale up to a shape constant, and check that numerically;
# - compute three other rankings next to it: the SNR of the first v1 commit (noise propagated from
#   the embeddings), the plain hidden-scale ranking, and Spectrum's weight SNR
#   {cite:p}`hartford2024spectrum`, on the Part I base model and on randomly initialised tiny
#   models of eight architectures, several seeds each;
# - show which $k$ layers each picks (`Largest` and `Lowest`), how much the picks agree, and what
#   v2's automatic calibration picks instead.
#
# Run time, measured in CPU time on the project's 2-core CPU: `smoke` about 11 s; `book` (the
# default) about 50 s with an empty model cache, most of it pretraining the shared base model,
# and 17 s once chapter 1 has cached it; `full` expected to take one to two minutes on one GPU
# with chapter 1's `full` base model cached (not measured yet).

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
seed = 0  # seeds the base model, the tiny models, the batches and the SNR noise
device = "auto"  # auto | cpu | cuda
n_seeds = None  # tiny models per architecture, seeds seed, seed+1, ... (None: the preset's)
n_layers = None  # decoder blocks of the tiny models (None: the preset's)
k = None  # layers picked, num_noise_layers (None: the preset's; v1's default is 3)

# %%
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from noisefit_lib import (
    facts,
    facts_llama,
    facts_tokenizer,
    plotting,
    records,
    report,
    runtime,
    stats,
    verdicts,
)
from noisefit_lib.noisefit import calibrate, data, toy_architectures
from noisefit_lib.noisefit import layers as nf_layers
from noisefit_lib.noisefit.inject import find_decoder_layers

PRESETS = {
    "smoke": {
        "archs": ["llama", "gpt2"],
        "n_seeds": 1,
        "n_layers": 4,
        "hidden": 32,
        "k": 2,
        "n_batch": 8,
        "seq_len": 16,
        "passes": 10,
        "sigma": 0.1,
    },
    "book": {
        "archs": list(toy_architectures.ARCHS),
        "n_seeds": 2,
        "n_layers": 8,
        "hidden": 64,
        "k": 3,
        "n_batch": 16,
        "seq_len": 32,
        "passes": 10,
        "sigma": 0.1,
    },
    "full": {
        "archs": list(toy_architectures.ARCHS),
        "n_seeds": 5,
        "n_layers": 16,
        "hidden": 256,
        "k": 3,
        "n_batch": 32,
        "seq_len": 64,
        "passes": 10,
        "sigma": 0.1,
    },
}
cfg = runtime.resolve(
    "where_to_inject_noise",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    n_seeds=n_seeds,
    n_layers=n_layers,
    k=k,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# NoiseFiT adds noise to the outputs of only a few decoder blocks. Which ones? The paper's answer
# is a signal-to-noise ratio per layer: rank the layers by SNR, then put noise on the $k$ with the
# largest SNR ("more robust") or the $k$ with the lowest ("potentially under-regularized"). The
# word suggests a measurement of robustness: how much a layer's representation is disturbed by a
# given noise.
#
# Whether it measures that depends entirely on how the noise in the ratio is made. The official
# code (`akhadangi/NoiseFiT`) changed its mind three days after its first commit: the first version
# added noise to the input embeddings and measured how much of it *reached* each layer, a
# robustness measurement; the released v1 adds noise directly to each layer's stored output,
# with a standard deviation proportional to that output's own scale, and divides. The second
# construction measures the noise it put in, that is, the scale it put it in with. This chapter
# derives that, checks it, and compares the layer choices it makes with three alternatives:
# propagated noise, the hidden scale itself, and Spectrum's weight SNR, a data-free statistic of
# the weight matrices that shares only its name with NoiseFiT's.

# %% [markdown]
# ## The math
#
# ### Adaptive noise
#
# A decoder block's output is $h \in \mathbb{R}^{B \times T \times H}$. NoiseFiT's noise on it
# (chapter 3 studies it in detail) has, for token $(b,t)$ and feature $i$, the standard deviation
#
# $$
# s_{bti} = b_0 \cdot \mathrm{MAD}_{bt} \cdot w_{bti} \cdot f_{bt}, \qquad
# w_{bti} = e^{-0.1\,|h_{bti} - m_{bt}| / (\mathrm{MAD}_{bt} + 10^{-6})}, \qquad
# f_{bt} = \min\!\left(5, e^{v_{bt} / \bar v}\right),
# $$ (eq-where-to-inject-noise-scale)
#
# where $m_{bt}$ is the median of the token's $H$ features (the lower middle value),
# $\mathrm{MAD}_{bt}$ their median absolute deviation from it (floored at $10^{-6}\lVert
# h_{bt}\rVert$), $v_{bt}$ their variance and $\bar v$ its mean over tokens. The noisy output is
# $\tilde h = h + s \odot \varepsilon$ with $\varepsilon \sim \mathcal N(0, I)$. $b_0$ is the base
# standard deviation; the SNR estimator uses $b_0 = \sigma\,\mathrm{std}(h)$ with $\sigma$ =
# `noise_std` = 0.1 and $\mathrm{std}(h)$ the std of all entries of $h$.
#
# ### v1's SNR
#
# For layer $\ell$ with clean output $h_\ell$ on one batch, with $P = 10$ passes,
#
# $$
# \mathrm{SNR}_\ell = \frac{\operatorname{mean}|h_\ell|}
# {\frac1P \sum_{p=1}^{P} \operatorname{mean}\bigl|\tilde h_\ell^{(p)} - h_\ell\bigr| + 10^{-6}},
# \qquad \tilde h_\ell^{(p)} = h_\ell + s_\ell \odot \varepsilon^{(p)},
# $$ (eq-where-to-inject-noise-snr-v1)
#
# means over the batch's real tokens and all features. Nothing is propagated: the noise is added
# to the stored $h_\ell$ and subtracted again.
#
# ### What it measures
#
# $\tilde h - h = s \odot \varepsilon$ and $E|\varepsilon| = \sqrt{2/\pi}$ for a standard normal,
# so the denominator is an average of $N P$ independent terms with mean
# $\sqrt{2/\pi}\,\operatorname{mean}(s)$, and
#
# $$
# \mathrm{SNR}_\ell \;\xrightarrow{P \to \infty}\; \mathrm{SNR}^\ast_\ell =
# \frac{\operatorname{mean}|h_\ell|}{\sqrt{2/\pi}\,\operatorname{mean}(s_\ell) + 10^{-6}}.
# $$ (eq-where-to-inject-noise-closed)
#
# **Claim 1:** the Monte-Carlo estimate {eq}`eq-where-to-inject-noise-snr-v1` equals the closed
# form {eq}`eq-where-to-inject-noise-closed` up to a relative error of order
# $\mathrm{cv}(|s\varepsilon|)/\sqrt{NP}$ ($N$ = number of entries of $h_\ell$): a fraction of a
# percent for a batch of tens of thousands of entries, and the layer order it gives is the
# closed form's. The ten passes buy nothing.
#
# Now scale the layer output, $h \to c\,h$ with $c > 0$. The median, the MAD and
# $\mathrm{std}(h)$ scale by $c$; $w$ and $f$ are ratios and do not change. So $b_0 \to c\,b_0$
# and $s \to c^2 s$, while $\operatorname{mean}|h| \to c \operatorname{mean}|h|$. Writing
# $\operatorname{mean}|h| = \kappa_1 \mathrm{std}(h)$ and
# $\operatorname{mean}(\mathrm{MAD}\,w\,f) = \kappa_2 \mathrm{std}(h)$, where $\kappa_1, \kappa_2$
# depend only on the *shape* of the distribution of $h$, not on its scale,
#
# $$
# \mathrm{SNR}^\ast_\ell = \frac{\kappa_{1,\ell}}{\sqrt{2/\pi}\,\kappa_{2,\ell}}
# \cdot \frac{1}{\sigma\,\mathrm{std}(h_\ell)}.
# $$ (eq-where-to-inject-noise-inverse-scale)
#
# **Claim 2:** $\mathrm{SNR}(c\,h)\cdot c$ and $\mathrm{SNR}\cdot\sigma$ are constant (up to the
# $10^{-6}$ guards): the SNR is an inverse scale, and $\sigma$ cannot change which layers are
# picked. **Claim 3:** across the layers of a model, the shape factor
# $\mathrm{SNR}_\ell\,\sigma\,\mathrm{std}(h_\ell)$ varies little (for a Gaussian $h$,
# $\kappa_1 = \sqrt{2/\pi}$, $\kappa_2 \approx 0.674 \cdot E[w f] \approx 1.6$, so the factor is
# about 0.6), so the SNR ranking is the inverse hidden-scale ranking: Spearman's
# $\rho(\mathrm{SNR}, 1/\mathrm{std}(h)) \approx 1$. `Largest` picks the layers with the smallest
# activations, `Lowest` the largest.
#
# ### Three alternatives
#
# **Propagated SNR** (the first v1 commit). Noise goes on the input embeddings $e$ (base std
# $\sigma^2 \mathrm{std}(e)$, the code squares $\sigma$ here) and the whole network runs on them:
#
# $$
# \mathrm{SNR}^{\mathrm{prop}}_\ell = \frac{\operatorname{mean}|h_\ell(e)|}
# {\frac1P \sum_{p} \operatorname{mean}\bigl|h_\ell(e + s_e \odot \varepsilon^{(p)}) -
# h_\ell(e)\bigr| + 10^{-6}}.
# $$ (eq-where-to-inject-noise-propagated)
#
# This one does measure something about the network: how much a fixed input perturbation is
# amplified or damped by the time it reaches layer $\ell$, relative to the signal there.
#
# **Hidden scale.** Rank by $\mathrm{std}(h_\ell)$ directly, $1/\mathrm{std}$ as the score.
#
# **Spectrum's weight SNR** {cite:p}`hartford2024spectrum`. For a weight matrix $W \in
# \mathbb{R}^{n \times m}$ with singular values $S_1 \ge S_2 \ge \dots$, a robust noise level
# $\hat\varsigma = \mathrm{IQR}(S)/1.349$ and a Marchenko-Pastur-style edge
# $\tau = \hat\varsigma(1 + \sqrt{\beta})$, $\beta = \min(n,m)/\max(n,m)$:
#
# $$
# \mathrm{SNR}(W) = \frac{1}{S_1}\cdot\frac{\sum_{S_j > \tau} S_j}{\sum_{S_j \le \tau} S_j},
# $$ (eq-where-to-inject-noise-spectrum)
#
# (a noise sum of 1 when no value is at or below $\tau$), averaged over a block's matrices. It
# needs no data. Spectrum uses it to decide which layers to *train*; here it is one more ranking.
# Two properties of this formula as coded (the official `spectrum.py`, whose edge has no
# $\sqrt{\max(n,m)}$ factor) matter for reading it. **Claim 4:** (a) for a pure Gaussian matrix
# the singular values are spread over an interval much wider than their IQR$/1.349$, so none is
# at or below $\tau$, the noise sum falls back to 1 and $\mathrm{SNR} = \sum_j S_j / S_1$: the
# *flattest* spectra score highest, and adding a strong low-rank signal (a large $S_1$) *lowers*
# the score; (b) when some values are at or below $\tau$, numerator and denominator of the ratio
# are scale-free but $1/S_1$ is not, so $\mathrm{SNR}(cW) = \mathrm{SNR}(W)/c$: Spectrum's score
# too is partly an inverse scale.
#
# ### Picks and agreement
#
# A score vector $r \in \mathbb{R}^L$ picks $\mathrm{top}_k(r)$ (`Largest`) or
# $\mathrm{top}_k(-r)$ (`Lowest`). Two rankings agree to the extent of Spearman's $\rho$ and two
# picked sets $A, B$ to the extent of their Jaccard overlap $J = |A \cap B| / |A \cup B|$. Two
# independent uniformly random $k$-subsets of $L$ layers have
#
# $$
# E[J] = \sum_{i} \frac{\binom{k}{i}\binom{L-k}{k-i}}{\binom{L}{k}}\cdot\frac{i}{2k - i},
# $$ (eq-where-to-inject-noise-jaccard)
#
# the chance level of the overlap ($i = |A \cap B|$ is hypergeometric).

# %% [markdown]
# ## Implementation
#
# | symbol | code (here) | library |
# |---|---|---|
# | $s$ {eq}`eq-where-to-inject-noise-scale` | `adaptive_scale_ref` | `noise.adaptive_scale` |
# | $\mathrm{SNR}_\ell$ {eq}`eq-where-to-inject-noise-snr-v1` | `snr_v1_ref` | `layers.snr_v1` |
# | $\mathrm{SNR}^\ast_\ell$ {eq}`eq-where-to-inject-noise-closed` | `snr_closed_ref` | `layers.snr_closed_form` |
# | $\mathrm{std}(h_\ell)$ | `hidden_std` | `layers.hidden_scale` |
# | $\mathrm{SNR}^{\mathrm{prop}}_\ell$ {eq}`eq-where-to-inject-noise-propagated` | `snr_propagated_ref` | `layers.snr_propagated` |
# | $\mathrm{SNR}(W)$ {eq}`eq-where-to-inject-noise-spectrum` | `weight_snr_ref`, `spectrum_ref` | `layers.weight_snr`, `layers.spectrum_snr` |
# | $\mathrm{top}_k$, $J$, $E[J]$ {eq}`eq-where-to-inject-noise-jaccard` | `layers.top_k`, `jaccard`, `chance_jaccard` | `layers.top_k` |
#
# The base model and a batch of its fine-tuning data: the `sft` split of chapter 1's world,
# tokenised as prompt-response pairs (`noisefit.data`'s "plain" template) and right-padded. Noise
# is drawn on the model's device (`dev_stream`), so the same code runs on a GPU.

# %% tags=["nbval-ignore-output", "remove-stderr"]
world, base = facts_llama.base_model(cfg.preset, seed=cfg.seed, device=cfg.device, progress=True)


# %%
def make_batch(tokenizer, items: list, device: str) -> dict[str, torch.Tensor]:
    """A right-padded batch (input_ids, attention_mask, labels) of prompt-response pairs."""
    tokens = data.tokenize_pairs(tokenizer, facts.as_pairs(items), template="plain")
    batch = data.CausalCollator(pad_token_id=facts_tokenizer.PAD_ID)(tokens)
    return {name: t.to(device) for name, t in batch.items()}


def dev_stream(seed: int, purpose: str) -> torch.Generator:
    """A generator on the model's device, seeded from runtime.stream(seed, purpose)."""
    start = int(torch.randint(0, 2**62, (1,), generator=runtime.stream(seed, purpose)))
    return torch.Generator(device=cfg.device).manual_seed(start)


model = base.model.eval()
sft = world.split("sft")
batch = make_batch(base.tokenizer, sft[: cfg.n_batch], cfg.device)
mask = batch["attention_mask"].bool()
hidden = nf_layers.layer_outputs(model, batch)  # each block's raw output, (B, T, H) per layer
print(
    f"{len(hidden)} layers, batch {tuple(batch['input_ids'].shape)}, "
    f"{report.sig(mask.float().mean().item())} of positions are real tokens"
)

# %% [markdown]
# The noise scale {eq}`eq-where-to-inject-noise-scale`, line by line. `mask` restricts the mean
# variance to real tokens and zeroes $s$ on padding (v1 let padding in; `faithful=True` in the
# library does too):


# %%
def adaptive_scale_ref(
    h: torch.Tensor,
    b0: float,
    mask: torch.Tensor | None = None,
    beta: float = 0.1,
    f_max: float = 5.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-element noise std s = b0 * MAD * w * f of NoiseFiT's adaptive noise."""
    v = h.var(dim=-1, keepdim=True)  # per-token variance over features (unbiased)
    v_bar = v.mean() if mask is None else v[mask].mean()
    f = torch.clamp(torch.exp(v / (v_bar + eps)), max=f_max)
    m = h.median(dim=-1, keepdim=True).values  # torch.median: the lower middle value
    dev = (h - m).abs()
    mad = torch.maximum(dev.median(dim=-1, keepdim=True).values, eps * h.norm(dim=-1, keepdim=True))
    w = torch.exp(-beta * dev / (mad + eps))  # outlier features get less noise
    s = b0 * mad * w * f
    return s if mask is None else s * mask.unsqueeze(-1)


s_demo = adaptive_scale_ref(hidden[0], 0.1 * hidden[0][mask].std().item(), mask)
print(
    "mean s / std(h) at layer 0:", report.sig((s_demo[mask].mean() / hidden[0][mask].std()).item())
)

# %% [markdown]
# v1's estimator {eq}`eq-where-to-inject-noise-snr-v1`. The loops run passes outside and layers
# inside, as v1 does, so that the same generator gives the same draws as the library's:


# %%
def snr_v1_ref(
    hidden: list[torch.Tensor],
    sigma: float,
    generator: torch.Generator,
    passes: int = 10,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """v1's SNR per layer: mean|h| over the mean of mean|h~ - h| across passes."""
    sel = (lambda x: x) if mask is None else (lambda x: x[mask])  # real tokens only
    signal = torch.stack([sel(h).abs().mean() for h in hidden])
    scales = [
        adaptive_scale_ref(h, sigma * sel(h).std().item(), mask) for h in hidden
    ]  # b0 = sigma std(h)
    noise = torch.zeros(passes, len(hidden))
    for p in range(passes):  # s does not depend on eps: v1 recomputes it every pass, we need not
        for layer, (h, s) in enumerate(zip(hidden, scales, strict=True)):
            eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
            noise[p, layer] = sel((h + s * eps) - h).abs().mean()
    return signal.cpu() / (noise.mean(dim=0) + 1e-6)


snr_base = snr_v1_ref(hidden, cfg.sigma, dev_stream(cfg.seed, "snr"), cfg.passes, mask)
print("v1 SNR per layer:", [report.sig(x) for x in snr_base.tolist()])

# %% [markdown]
# Its limit {eq}`eq-where-to-inject-noise-closed` and the hidden scale:


# %%
def snr_closed_ref(
    hidden: list[torch.Tensor], sigma: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The value v1's SNR estimates: mean|h| / (sqrt(2/pi) mean(s) + 1e-6), no sampling."""
    sel = (lambda x: x) if mask is None else (lambda x: x[mask])
    out = []
    for h in hidden:
        s = adaptive_scale_ref(h, sigma * sel(h).std().item(), mask)
        out.append(sel(h).abs().mean() / (math.sqrt(2 / math.pi) * sel(s).mean() + 1e-6))
    return torch.stack(out).cpu()


def hidden_std(hidden: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """std of all entries of each layer output (real tokens only when mask is given)."""
    return torch.stack([(h if mask is None else h[mask]).std() for h in hidden]).cpu()


closed_base, std_base = snr_closed_ref(hidden, cfg.sigma, mask), hidden_std(hidden, mask)
print(
    "closed form:",
    [report.sig(x) for x in closed_base.tolist()],
    " std(h):",
    [report.sig(x) for x in std_base.tolist()],
)

# %% [markdown]
# The propagated SNR {eq}`eq-where-to-inject-noise-propagated`. Like the first commit it reads
# `output_hidden_states`, whose last entry comes *after* the final norm, and averages over padding:


# %%
@torch.no_grad()
def snr_propagated_ref(
    model, batch: dict, sigma: float, generator: torch.Generator, passes: int = 10
) -> torch.Tensor:
    """SNR with noise on the input embeddings, propagated through the network."""
    ids, att = batch["input_ids"], batch["attention_mask"]
    clean = model(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states[1:]
    emb = model.get_input_embeddings()(ids)
    noise = torch.zeros(len(clean), device=emb.device)
    for _ in range(passes):
        s = adaptive_scale_ref(emb, sigma * emb.std().item() * sigma)  # sigma twice, as coded
        eps = torch.randn(emb.shape, generator=generator, device=emb.device, dtype=emb.dtype)
        noisy = model(
            inputs_embeds=emb + s * eps, attention_mask=att, output_hidden_states=True
        ).hidden_states[1:]
        noise += torch.stack([(a - b).abs().mean() for a, b in zip(noisy, clean, strict=True)])
    signal = torch.stack([h.abs().mean() for h in clean])
    return (signal / (noise / passes + 1e-6)).cpu()


prop_base = snr_propagated_ref(model, batch, cfg.sigma, dev_stream(cfg.seed, "prop"), cfg.passes)
print("propagated SNR:", [report.sig(x) for x in prop_base.tolist()])

# %% [markdown]
# Spectrum's weight SNR {eq}`eq-where-to-inject-noise-spectrum` and its block mean over every 2-D
# weight of a decoder block. The singular values are the square roots of the eigenvalues of the
# smaller Gram matrix, in float64: on this CPU that is about 100 times faster than
# `torch.linalg.svdvals` for these small matrices, and as accurate as float32 weights allow.


# %%
def weight_snr_ref(weight: torch.Tensor) -> float:
    """Spectrum's SNR of one weight matrix: signal/noise singular-value mass over S_1."""
    w = weight.detach().double().cpu()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T  # min(n, m) square
    s = (
        torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0).numpy()
    )  # singular values, descending
    q25, q75 = np.quantile(s, [0.25, 0.75])
    n, m = weight.shape
    tau = (q75 - q25) / 1.349 * (1 + math.sqrt(min(n, m) / max(n, m)))  # MP-style upper edge
    signal = s[s > tau].sum() if (s > tau).any() else 0.0
    noise = s[s <= tau].sum() if (s <= tau).any() else 1.0
    return float(signal / noise / s[0])


def spectrum_ref(model) -> torch.Tensor:
    """Mean weight SNR of each decoder block's 2-D weights (no data needed)."""
    return torch.tensor(
        [
            np.mean(
                [
                    weight_snr_ref(p)
                    for name, p in block.named_parameters()
                    if p.dim() == 2 and "lora_" not in name and min(p.shape) > 1
                ]
            )
            for block in find_decoder_layers(model)
        ]
    )


spec_base = spectrum_ref(model)
print("Spectrum weight SNR per block:", [report.sig(x) for x in spec_base.tolist()])

# %% [markdown]
# Overlap of picked sets and its chance level {eq}`eq-where-to-inject-noise-jaccard`; the picks
# themselves are `layers.top_k` (a `torch.topk`, sorted):


# %%
def jaccard(a: list[int], b: list[int]) -> float:
    """|A & B| / |A | B| of two picked layer sets."""
    return len(set(a) & set(b)) / len(set(a) | set(b))


def chance_jaccard(n_layers: int, k: int) -> float:
    """E[J] of two independent uniformly random k-subsets of n_layers layers."""
    total = math.comb(n_layers, k)
    return sum(
        math.comb(k, i) * math.comb(n_layers - k, k - i) / total * i / (2 * k - i)
        for i in range(k + 1)
    )


print("chance overlap of two random 3-of-8 picks:", report.sig(chance_jaccard(8, 3)))

# %% [markdown]
# ## Checks
#
# The teaching versions equal the library's (same generator seeds, so the same noise draws):

# %%
lib_snr = nf_layers.snr_v1(
    hidden,
    cfg.sigma,
    generator=dev_stream(cfg.seed, "snr"),
    passes=cfg.passes,
    mask=batch["attention_mask"],
)
torch.testing.assert_close(snr_base, lib_snr.cpu(), rtol=1e-5, atol=0)
torch.testing.assert_close(
    closed_base, nf_layers.snr_closed_form(hidden, cfg.sigma, mask=mask).cpu(), rtol=1e-5, atol=0
)
torch.testing.assert_close(std_base, nf_layers.hidden_scale(hidden, mask=mask).cpu())
for h in hidden:
    torch.testing.assert_close(
        adaptive_scale_ref(h, 0.3, mask),
        nf_layers.adaptive_scale(h, 0.3, mask=mask),
        rtol=1e-5,
        atol=1e-7,
    )
lib_prop = nf_layers.snr_propagated(
    model, batch, cfg.sigma, generator=dev_stream(cfg.seed, "prop"), passes=cfg.passes
)
torch.testing.assert_close(prop_base, lib_prop.cpu(), rtol=1e-4, atol=0)
block_weights = [p for p in find_decoder_layers(model)[0].parameters() if p.dim() == 2]
for p in block_weights:
    assert abs(weight_snr_ref(p) - nf_layers.weight_snr(p)) <= 1e-4 * abs(weight_snr_ref(p)) + 1e-7
torch.testing.assert_close(
    spec_base.float(), nf_layers.spectrum_snr(model).float(), rtol=1e-4, atol=1e-7
)
assert (
    abs(
        chance_jaccard(8, 3)
        - np.mean([jaccard([0, 1, 2], sorted(c)) for c in itertools.combinations(range(8), 3)])
    )
    < 1e-12
)
print("teaching versions equal the library's")

# %% [markdown]
# **Claim 1** (the passes buy nothing): the 10-pass estimate against the closed form, and the
# spread of the estimate over 20 independent runs against the standard error predicted from
# $E|s\varepsilon| = \sqrt{2/\pi}\,E[s]$ and $E|s\varepsilon|^2 = E[s^2]$ over $N P$ terms:


# %%
def predicted_rel_se(h: torch.Tensor, sigma: float, passes: int, mask: torch.Tensor) -> float:
    """Relative standard error of the noise term: sd(|s eps|) / (E|s eps| sqrt(N P))."""
    s = adaptive_scale_ref(h, sigma * h[mask].std().item(), mask)[mask].flatten()
    mean_abs = math.sqrt(2 / math.pi) * s.mean()  # E|s eps|; E|s eps|^2 = E[s^2]
    return (
        (s.square().mean() - mean_abs**2).sqrt() / (mean_abs * math.sqrt(s.numel() * passes))
    ).item()


rel_mc = (snr_base / closed_base - 1).abs().max().item()
gen_rep = dev_stream(cfg.seed, "snr repeats")
reps = torch.stack([snr_v1_ref(hidden, cfg.sigma, gen_rep, cfg.passes, mask) for _ in range(20)])
rel_spread = (reps.std(dim=0) / reps.mean(dim=0)).max().item()
rel_pred = max(predicted_rel_se(h, cfg.sigma, cfg.passes, mask) for h in hidden)
print(
    f"max |MC / closed form - 1| = {rel_mc:.2e}; relative std over 20 runs = {rel_spread:.2e}; "
    f"predicted {rel_pred:.2e}"
)
assert rel_mc < 4 * rel_pred and 0.5 < rel_spread / rel_pred < 1.5

# %% [markdown]
# **Claim 2** (an inverse scale, and $\sigma$ only rescales it): scale the outputs by $c$, or
# change $\sigma$:

# %%
cs = (0.3, 1.0, 10.0, 100.0)
by_c = torch.stack([snr_closed_ref([c * h for h in hidden], cfg.sigma, mask) * c for c in cs])
sigmas = (0.01, 0.1, 0.5)
by_sigma = torch.stack([snr_closed_ref(hidden, sg, mask) * sg for sg in sigmas])
print("SNR * c, rows c =", cs, "\n", by_c.numpy().round(4))
print("SNR * sigma, rows sigma =", sigmas, "\n", by_sigma.numpy().round(4))
torch.testing.assert_close(by_c, by_c[1].expand_as(by_c), rtol=1e-3, atol=0)
torch.testing.assert_close(by_sigma, by_sigma[1].expand_as(by_sigma), rtol=1e-3, atol=0)

# %% [markdown]
# The shape constant for Gaussian outputs, the value quoted under Claim 3:

# %%
gauss = torch.randn(64, 32, 128, generator=runtime.stream(cfg.seed, "gauss"))
gauss_factor = (snr_closed_ref([gauss], cfg.sigma) * cfg.sigma * gauss.std()).item()
print("SNR * sigma * std(h) for Gaussian h:", report.sig(gauss_factor))
assert 0.5 < gauss_factor < 0.7

# %% [markdown]
# **Claim 4** (Spectrum's formula): a tall (256 x 64) Gaussian matrix, the same plus a strong
# rank-4 component, and a square (128 x 128) Gaussian matrix, each also scaled by 10:


# %%
def spectrum_parts(weight: torch.Tensor) -> tuple[int, int]:
    """Number of singular values above / at or below Spectrum's edge tau."""
    s = np.linalg.svd(weight.numpy(), compute_uv=False)
    q25, q75 = np.quantile(s, [0.25, 0.75])
    tau = (q75 - q25) / 1.349 * (1 + math.sqrt(min(weight.shape) / max(weight.shape)))
    return int((s > tau).sum()), int((s <= tau).sum())


gw = runtime.stream(cfg.seed, "weights")
w_tall = torch.randn(256, 64, generator=gw) / 16
w_structured = w_tall + torch.randn(256, 4, generator=gw) @ torch.randn(4, 64, generator=gw) / 4
w_square = torch.randn(128, 128, generator=gw) / 16
for name, w in (
    ("tall Gaussian", w_tall),
    ("tall + rank 4", w_structured),
    ("square Gaussian", w_square),
):
    print(
        f"{name:16} weight SNR {report.sig(weight_snr_ref(w)):>8}, "
        f"x10: {report.sig(weight_snr_ref(10 * w)):>8}, "
        f"singular values above/below tau {spectrum_parts(w)}"
    )
s_tall = np.linalg.svd(w_tall.numpy(), compute_uv=False)
assert spectrum_parts(w_tall)[1] == 0  # (a): nothing is "noise" in a pure noise matrix
assert abs(weight_snr_ref(w_tall) - s_tall.sum() / s_tall[0]) < 1e-3 * weight_snr_ref(w_tall)
assert weight_snr_ref(w_structured) < weight_snr_ref(w_tall)  # structure lowers the score
assert spectrum_parts(w_square)[1] > 0  # (b): an inverse scale once the noise sum is real
assert abs(weight_snr_ref(10 * w_square) * 10 / weight_snr_ref(w_square) - 1) < 1e-4

# %% [markdown]
# Claim 3 is about real layers, so it is checked in the experiment, over many models.
#
# ## Experiment
#
# Two sets of models:
#
# - the Part I **base model** (its `book` version has only 2 decoder blocks, so each method picks
#   $k = 1$ layer there; `full`'s has 8 and picks 3), with every estimator, v1's faithful variant
#   (post-norm last entry, padding included) and v2's automatic calibration on two batches;
# - **toy models of eight architectures** (`noisefit.toy_architectures`), built from configs,
#   *randomly initialised*, on batches of random tokens with random lengths. Random weights are
#   fine for the question "what does the estimator measure", which is a property of the estimator
#   and the activations it is given, not of what the model knows; they are not fine for the
#   question "which layers should get noise", which only fine-tuning (chapter 5) can answer.
#   Spectrum's weight SNR in particular has little to find in random weights.

# %%
seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
k_base = max(1, min(cfg.k, len(hidden) // 2))
print(
    f"preset {cfg.preset}: base model {len(hidden)} layers (k = {k_base}); tiny models "
    f"{len(cfg.archs)} architectures x seeds {seeds}, {cfg.n_layers} layers of width {cfg.hidden} "
    f"(k = {cfg.k}); batches {cfg.n_batch} x {cfg.seq_len}; sigma {cfg.sigma}, {cfg.passes} passes"
)

# %% [markdown]
# The base model: every score, and v2's calibration (for each layer and 5 candidate noise scales
# one probe forward pass, scored by the KL it causes, penalised by the cross-entropy damage; see
# {doc}`/book/noisefit_library`):

# %%
METHODS = ("v1 SNR", "1/std(h)", "propagated SNR", "Spectrum")
faithful_hidden = nf_layers.layer_outputs(model, batch, post_norm_last=True)
snr_faithful = snr_v1_ref(faithful_hidden, cfg.sigma, dev_stream(cfg.seed, "snr"), cfg.passes)
base_scores = {
    "v1 SNR": snr_base,
    "1/std(h)": 1 / std_base,
    "propagated SNR": prop_base,
    "Spectrum": spec_base,
    "v1 SNR (faithful)": snr_faithful,
}
calib_batches = [batch, make_batch(base.tokenizer, sft[cfg.n_batch : 2 * cfg.n_batch], cfg.device)]
auto = calibrate.calibrate_auto(model, calib_batches, generator=dev_stream(cfg.seed, "auto"))
base_picks = {
    name: {fmt: nf_layers.top_k(r, k_base, fmt) for fmt in nf_layers.SNR_FORMATS}
    for name, r in base_scores.items()
}
print(
    "v2 auto calibration picks",
    auto.layers,
    "with base std",
    {i: report.sig(v) for i, v in auto.sigmas.items()},
)

# %% [markdown]
# The tiny models: for each architecture and seed, every score and both picks. A batch has random
# token ids and right padding after a random length of at least half the sequence:


# %%
def random_batch(n: int, length: int, vocab: int, generator: torch.Generator) -> dict:
    """Random token ids with right padding (id 0) after random lengths in [length/2, length]."""
    ids = torch.randint(4, vocab, (n, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=generator)
    att = (torch.arange(length) < lengths[:, None]).long()
    return {"input_ids": (ids * att).to(cfg.device), "attention_mask": att.to(cfg.device)}


def score_model(net, b: dict, s: int) -> dict[str, torch.Tensor]:
    """All four scores of one model on one batch (higher = picked by 'Largest')."""
    hs = nf_layers.layer_outputs(net, b)
    m = b["attention_mask"].bool()
    return {
        "v1 SNR": snr_v1_ref(hs, cfg.sigma, dev_stream(s, "snr tiny"), cfg.passes, m),
        "1/std(h)": 1 / hidden_std(hs, m),
        "propagated SNR": snr_propagated_ref(
            net, b, cfg.sigma, dev_stream(s, "prop tiny"), cfg.passes
        ),
        "Spectrum": spectrum_ref(net),
        "std(h)": hidden_std(hs, m),
    }


# %%
tiny_models = []  # one dict per tiny model: its per-layer scores and picks
for arch in cfg.archs:
    for s in seeds:
        net = toy_architectures.toy_model(
            arch, seed=s, hidden=cfg.hidden, layers=cfg.n_layers, heads=4
        )
        net = net.to(cfg.device).eval()
        b = random_batch(cfg.n_batch, cfg.seq_len, 1000, runtime.stream(s, f"batch {arch}"))
        sc = score_model(net, b, s)
        tiny_models.append(
            {
                "arch": arch,
                "seed": s,
                **{name: v.tolist() for name, v in sc.items()},
                "picks": {
                    name: {
                        fmt: nf_layers.top_k(sc[name], cfg.k, fmt) for fmt in nf_layers.SNR_FORMATS
                    }
                    for name in METHODS
                },
            }
        )
print(len(tiny_models), "tiny models scored")

# %% [markdown]
# Agreement of every pair of rankings, per model: Spearman's $\rho$ and the Jaccard overlap of the
# `Largest` and of the `Lowest` picks; and the shape factor $\mathrm{SNR}\cdot\sigma\cdot
# \mathrm{std}(h)$ of every layer (Claim 3):

# %%
PAIRS = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1 :]]
for r in tiny_models:
    r["rho"] = {f"{a} ~ {b}": float(spearmanr(r[a], r[b])[0]) for a, b in PAIRS}
    r["jaccard"] = {
        fmt: {f"{a} ~ {b}": jaccard(r["picks"][a][fmt], r["picks"][b][fmt]) for a, b in PAIRS}
        for fmt in nf_layers.SNR_FORMATS
    }
    r["factor"] = (np.array(r["v1 SNR"]) * cfg.sigma * np.array(r["std(h)"])).tolist()
factors = np.array([r["factor"] for r in tiny_models])
rho_scale = np.array([r["rho"]["v1 SNR ~ 1/std(h)"] for r in tiny_models])
print(
    f"SNR * sigma * std(h) over {factors.size} layers: {report.sig(factors.min())} .. "
    f"{report.sig(factors.max())}; rho(v1 SNR, 1/std) min {report.sig(rho_scale.min())}, "
    f"mean {report.sig(rho_scale.mean())}"
)

# %% [markdown]
# Everything measured goes to a results file under `runs/` (git-ignored):

# %% tags=["nbval-ignore-output"]
results = {
    "base": {
        "n_layers": len(hidden),
        "k": k_base,
        "scores": {name: v.tolist() for name, v in base_scores.items()},
        "std": std_base.tolist(),
        "closed_form": closed_base.tolist(),
        "picks": base_picks,
        "auto": {
            "layers": auto.layers,
            "sigmas": {str(i): v for i, v in auto.sigmas.items()},
            "scores": auto.scores,
            "threshold": auto.report["threshold"],
        },
        "mc_rel_error": rel_mc,
        "mc_rel_spread": rel_spread,
        "sigma_rel_dev": float((by_sigma / by_sigma[1] - 1).abs().max()),
    },
    "tiny": tiny_models,
    "chance_jaccard": chance_jaccard(cfg.n_layers, cfg.k),
}
records.save(cfg, results)

# %% [markdown]
# ## Results
#
# ### The base model
#
# Every score of every layer, and what each method picks (`Largest` / `Lowest`; v2 picks its own
# number of layers, at most $\lceil\sqrt L\,\rceil$, and a noise scale for each):


# %%
def base_tables(res: dict) -> None:
    """Per-layer scores of the base model, then the picks of every method."""
    b = res["base"]
    scores = pd.DataFrame(
        {
            "layer": range(b["n_layers"]),
            "std(h)": b["std"],
            **{name: v for name, v in b["scores"].items() if name != "1/std(h)"},
            "v2 score": b["auto"]["scores"],
            "v2 base std": [b["auto"]["sigmas"].get(str(i), "-") for i in range(b["n_layers"])],
        }
    )
    picks = pd.DataFrame(b["picks"]).T.astype(str)
    picks.loc["v2 auto"] = [str(b["auto"]["layers"]), "-"]
    picks.columns = [f"{fmt} (k={b['k']})" for fmt in picks.columns]
    report.show_table(scores)
    report.show_table(picks.rename_axis("method").reset_index())


base_tables(results)

# %%
bp = results["base"]["picks"]
report.glue_all(
    {
        "base_layers": str(len(hidden)),
        "base_k": str(k_base),
        "base_snr_largest": str(bp["v1 SNR"]["Largest"]),
        "base_snr_lowest": str(bp["v1 SNR"]["Lowest"]),
        "base_faithful_largest": str(bp["v1 SNR (faithful)"]["Largest"]),
        "base_prop_largest": str(bp["propagated SNR"]["Largest"]),
        "base_spec_largest": str(bp["Spectrum"]["Largest"]),
        "base_auto": str(auto.layers),
        "snr_last": snr_base[-1].item(),
        "snr_faithful_last": snr_faithful[-1].item(),
        "base_same_as_scale": "the same layers as"
        if bp["v1 SNR"] == bp["1/std(h)"]
        else "different layers from",
        "mc_rel_error": report.sig(rel_mc, 2),
        "mc_rel_spread": report.sig(rel_spread, 2),
        "gauss_factor": report.sig(gauss_factor, 3),
    }
)

# %% [markdown]
# On the base model ({glue:text}`base_layers` blocks, $k$ = {glue:text}`base_k`), v1's SNR picks
# {glue:text}`base_same_as_scale` the inverse hidden scale, in both formats: `Largest` gives
# {glue:text}`base_snr_largest` and `Lowest` {glue:text}`base_snr_lowest`. The faithful variant,
# whose last entry is measured after the final norm (and whose statistics include padding), picks
# {glue:text}`base_faithful_largest` as `Largest`; its SNR of the last layer is
# {glue:text}`snr_faithful_last` instead of {glue:text}`snr_last`: the norm changes the last
# layer's scale, and with it the SNR, without changing the block. The propagated SNR picks
# {glue:text}`base_prop_largest`, Spectrum {glue:text}`base_spec_largest`, and v2's calibration
# {glue:text}`base_auto`. The Monte-Carlo estimate differs from the closed form by at most a
# fraction {glue:text}`mc_rel_error` (relative spread over 20 repeats
# {glue:text}`mc_rel_spread`): the SNR is a deterministic function of the batch.
#
# ### What v1's SNR measures, over many models
#
# Two tidy tables hold the tiny models: `agreement_table` one row per (model, pair of rankings),
# `layer_table` one row per (model, layer). The figures, the table and the numbers below come from
# them, and so do the verdicts, for the book run and for a committed `full` run.


# %%
def agreement_table(models: list[dict]) -> pd.DataFrame:
    """One row per (model, pair of rankings): Spearman's rho and the Jaccard overlaps."""
    return pd.DataFrame(
        [
            {
                "arch": r["arch"],
                "seed": r["seed"],
                "pair": pair,
                "rho": rho,
                **{f"J {fmt}": r["jaccard"][fmt][pair] for fmt in nf_layers.SNR_FORMATS},
            }
            for r in models
            for pair, rho in r["rho"].items()
        ]
    )


def layer_table(models: list[dict]) -> pd.DataFrame:
    """One row per (model, layer): std(h), v1's SNR, the shape factor, which methods pick it."""
    return pd.DataFrame(
        [
            {
                "arch": r["arch"],
                "seed": r["seed"],
                "layer": i,
                "std(h)": r["std(h)"][i],
                "v1 SNR": r["v1 SNR"][i],
                "factor": r["factor"][i],
                **{
                    f"{m} {fmt}": i in r["picks"][m][fmt]
                    for m in METHODS
                    for fmt in nf_layers.SNR_FORMATS
                },
            }
            for r in models
            for i in range(len(r["std(h)"]))
        ]
    )


agreement, layer_rows = agreement_table(tiny_models), layer_table(tiny_models)
mean_rho = agreement.groupby("pair")["rho"].mean()
rho_matrix = np.array(
    [
        [1.0 if a == b else mean_rho.get(f"{a} ~ {b}", mean_rho.get(f"{b} ~ {a}")) for b in METHODS]
        for a in METHODS
    ]
)
fig, (ax_sc, ax_rho) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
for i, (arch, rs) in enumerate(layer_rows.groupby("arch", sort=False)):
    colour = plotting.style(1 + i % 6)["color"]  # black (style 0) is the base model's
    ax_sc.scatter(
        rs["std(h)"],
        rs["v1 SNR"],
        s=14,
        color=colour,
        marker="os^DvPXh"[i % 8],
        label=arch,
        alpha=0.8,
    )
ax_sc.scatter(std_base, snr_base, s=120, marker="*", color="black", label="base model")
all_std = np.concatenate([layer_rows["std(h)"], std_base.numpy()])
grid = np.geomspace(all_std.min() / 1.5, all_std.max() * 1.5, 50)
ax_sc.plot(
    grid, gauss_factor / (cfg.sigma * grid), color="grey", linewidth=1, label="C / (sigma std)"
)
ax_sc.set(
    xscale="log",
    yscale="log",
    xlabel="std of the layer output, std(h) (activation units)",
    ylabel="v1 SNR (dimensionless)",
)
ax_sc.legend(fontsize=7, ncols=2)
im = ax_rho.imshow(rho_matrix, vmin=-1, vmax=1, cmap="RdBu_r")
for (i, j), v in np.ndenumerate(rho_matrix):
    ax_rho.text(
        j,
        i,
        f"{v:.2f}",
        ha="center",
        va="center",
        fontsize=9,
        color="white" if abs(v) > 0.6 else "black",
    )
ax_rho.set_xticks(range(len(METHODS)), [m.replace(" ", "\n") for m in METHODS], fontsize=8)
ax_rho.set_yticks(range(len(METHODS)), METHODS, fontsize=8)
ax_rho.grid(False)
fig.colorbar(im, ax=ax_rho, label="mean Spearman rho")
report.glue_figure("fig-where-to-inject-noise-inverse-scale", fig)

# %% [markdown]
# ```{glue:figure} fig-where-to-inject-noise-inverse-scale
# :name: fig-where-to-inject-noise-inverse-scale
#
# Left: v1's SNR of every layer of every tiny model (colour: architecture; all seeds) and of the
# base model (black stars) against the std of that layer's output, log-log. The grey line is
# SNR = C / (sigma std(h)) with C the Gaussian shape constant; points on a line of slope -1 mean
# the SNR is an inverse scale. Right: mean Spearman correlation between the four layer rankings
# over all tiny models (archs x seeds).
# ```
#
# Per architecture, means over seeds with 95 % $t$-intervals (none with a single seed):
# Spearman's $\rho$ of v1's SNR with the inverse scale and with the two other rankings, the
# range of the shape factor across layers, and the Jaccard overlap of v1's `Largest` picks with
# the other methods' (chance {glue:text}`chance_jaccard`):

# %%
SHOWN_PAIRS = {
    "v1 SNR ~ 1/std(h)": "1/std",
    "v1 SNR ~ propagated SNR": "propagated",
    "v1 SNR ~ Spectrum": "Spectrum",
}


def arch_table(models: list[dict]) -> pd.DataFrame:
    """One row per architecture: agreement of v1's SNR with the other rankings, over seeds."""
    agree = agreement_table(models)
    agree = agree[agree["pair"].isin(SHOWN_PAIRS)].rename(columns={"J Largest": "J"})
    long = agree.melt(id_vars=["arch", "seed", "pair"], value_vars=["rho", "J"], var_name="of")
    summary = stats.summarise(long, "value", by=["arch", "of", "pair"])
    summary["column"] = summary["of"] + "(v1, " + summary["pair"].map(SHOWN_PAIRS) + ")"
    summary["text"] = [stats.estimate_of(row).text() for _, row in summary.iterrows()]
    table = summary.pivot(index="arch", columns="column", values="text")
    factor = layer_table(models).groupby("arch")["factor"]
    table["SNR sigma std(h)"] = (
        factor.min().map("{:.3f}".format) + "-" + factor.max().map("{:.3f}".format)
    )
    first = pd.DataFrame(models).drop_duplicates("arch").set_index("arch")["picks"]
    table["v1 Largest / Lowest (first seed)"] = first.map(
        lambda p: f"{p['v1 SNR']['Largest']} / {p['v1 SNR']['Lowest']}"
    )
    columns = [f"{of}(v1, {short})" for of in ("rho", "J") for short in SHOWN_PAIRS.values()]
    order = list(dict.fromkeys(r["arch"] for r in models))
    return table.loc[
        order, [*columns[:3], "SNR sigma std(h)", *columns[3:], "v1 Largest / Lowest (first seed)"]
    ].reset_index()


report.glue("chance_jaccard", report.sig(chance_jaccard(cfg.n_layers, cfg.k), 3))
report.show_table(arch_table(tiny_models))

# %% [markdown]
# ### Which layers each method picks

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, fmt in zip(axes, nf_layers.SNR_FORMATS, strict=True):
    freq = layer_rows.groupby("layer")[[f"{m} {fmt}" for m in METHODS]].mean().T.to_numpy()
    im = ax.imshow(freq, vmin=0, vmax=1, aspect="auto", cmap="viridis")
    ax.set(title=f"{fmt} (k = {cfg.k})", xlabel="decoder layer (0 = first)")
    ax.set_yticks(range(len(METHODS)), METHODS)
    ax.set_xticks(range(cfg.n_layers))
    ax.grid(False)
fig.colorbar(im, ax=axes, label="fraction of models picking the layer")
report.glue_figure("fig-where-to-inject-noise-picks", fig)

# %% [markdown]
# ```{glue:figure} fig-where-to-inject-noise-picks
# :name: fig-where-to-inject-noise-picks
#
# How often each layer of the tiny models is picked, by method (rows) and format (left: Largest,
# right: Lowest), as a fraction of all tiny models (archs x seeds). Layer 0 is the first decoder
# block.
# ```


# %%
def headline(models: list[dict], n_layers: int) -> dict[str, float]:
    """Headline numbers over all tiny models: agreement with the scale ranking, depth of picks."""
    agree, layers = agreement_table(models).set_index("pair"), layer_table(models)

    def depth(method: str, fmt: str) -> float:
        return float(layers.loc[layers[f"{method} {fmt}"], "layer"].mean() / (n_layers - 1))

    rho = agree["rho"]
    return {
        "rho_scale_mean": rho["v1 SNR ~ 1/std(h)"].mean(),
        "rho_scale_min": rho["v1 SNR ~ 1/std(h)"].min(),
        "same_picks": np.mean([r["picks"]["v1 SNR"] == r["picks"]["1/std(h)"] for r in models]),
        "rho_prop_mean": rho["v1 SNR ~ propagated SNR"].mean(),
        "rho_spec_mean": rho["v1 SNR ~ Spectrum"].mean(),
        "j_prop": agree.loc["v1 SNR ~ propagated SNR", "J Largest"].mean(),
        "j_spec": agree.loc["v1 SNR ~ Spectrum", "J Largest"].mean(),
        "factor_min": layers["factor"].min(),
        "factor_max": layers["factor"].max(),
        "depth_largest": depth("v1 SNR", "Largest"),
        "depth_lowest": depth("v1 SNR", "Lowest"),
        "depth_prop_largest": depth("propagated SNR", "Largest"),
        "depth_spec_largest": depth("Spectrum", "Largest"),
        "std_ratio": layers["std(h)"].max() / layers["std(h)"].min(),
    }


head = headline(tiny_models, cfg.n_layers)
rho_by_arch = agreement[agreement["pair"] == "v1 SNR ~ 1/std(h)"].groupby("arch")["rho"].mean()
report.glue_all(
    {
        **{key: report.sig(value, 3) for key, value in head.items() if key != "std_ratio"},
        "std_ratio": report.sig(head["std_ratio"], 2),
        "n_tiny": str(len(tiny_models)),
        "lowest_rho_arch": rho_by_arch.idxmin(),
        "prop_order": "mostly the opposite order"
        if head["rho_prop_mean"] < -0.3
        else "a different order"
        if head["rho_prop_mean"] < 0.7
        else "a similar order",
        "prop_where": "deep" if head["depth_prop_largest"] > 0.5 else "early",
    }
)
print({key: report.sig(v) for key, v in head.items()})

# %% [markdown]
# Over the {glue:text}`n_tiny` tiny models, the shape factor
# $\mathrm{SNR}\cdot\sigma\cdot\mathrm{std}(h)$ stays between {glue:text}`factor_min` and
# {glue:text}`factor_max` across all layers, near the Gaussian value {glue:text}`gauss_factor`,
# while $\mathrm{std}(h)$ itself varies by a factor of {glue:text}`std_ratio` between the
# smallest and the largest layer ({numref}`fig-where-to-inject-noise-inverse-scale`, left). So
# the SNR ranking is the inverse-scale ranking: Spearman's $\rho$ averages
# {glue:text}`rho_scale_mean` (lowest {glue:text}`rho_scale_min`), and v1 picks exactly the same
# layers as the inverse scale in a fraction {glue:text}`same_picks` of the models. Where
# $\rho < 1$ (lowest for {glue:text}`lowest_rho_arch`), the layers have almost equal scales and
# the small differences of the shape factor decide part of the order; a large embedding (Gemma
# multiplies it by $\sqrt H$) dominates every layer's residual stream in a randomly initialised
# model. In pre-LN models the residual stream grows with depth, so `Largest` picks early layers
# (mean relative depth {glue:text}`depth_largest`, 0 = first, 1 = last) and `Lowest` deep ones
# ({glue:text}`depth_lowest`; {numref}`fig-where-to-inject-noise-picks`).
#
# The two rankings that measure something else do not agree with it. The propagated SNR ranks
# the layers in {glue:text}`prop_order` (mean $\rho$ {glue:text}`rho_prop_mean` with v1's SNR): a
# perturbation of the embeddings shrinks relative to the growing residual stream, so its
# `Largest` picks {glue:text}`prop_where` layers (mean relative depth
# {glue:text}`depth_prop_largest`), and its `Largest` picks overlap v1's by only
# {glue:text}`j_prop` on average, against {glue:text}`chance_jaccard` for two random picks.
# Spectrum's weight SNR has $\rho$ {glue:text}`rho_spec_mean` with v1's SNR and an overlap of
# {glue:text}`j_spec`, about what chance gives: on random weights its ranking reflects the shapes
# of the matrices (Claim 4), not learned structure. The two "SNR" names describe three unrelated
# quantities.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# The paper's rationale is that SNR separates "more robust" layers from "potentially
# under-regularized" ones (abstract). Its code's v1 estimator cannot carry that meaning: it
# injects noise proportional to the layer's own scale and measures it back. The first commit's
# propagated SNR does measure a response of the network, and v2 replaced SNR selection with a
# calibration by the KL and cross-entropy change that probe noise causes, calling SNR diagnostic.
#
# One function computes every verdict from a run's results (the book run here, a committed
# `full` run when there is one, which then takes over the verdict). The unit of replication of
# the tiny-model claims is one randomly initialised model (an architecture and a seed); their
# intervals are $t$-intervals over the {glue:text}`n_tiny` models.
#
# - *SNR identifies robust layers.* If v1's SNR ranked layers by robustness, it would rank them
#   like the one robustness measurement here, the propagated SNR: the effect is Spearman's
#   $\rho$(v1 SNR, propagated SNR), expected positive. Smallest effect of interest
#   {glue:text}`sesoi_robust`: a rank correlation below it shares less than a tenth of the
#   ranking's variance, too little to pick the same layers.
# - *v1's SNR is the inverse hidden scale* (Claim 3), a numerical check: mean
#   $\rho$(v1 SNR, 1/std) above 0.9.
# - *The ten passes buy nothing* (Claim 1) and *$\sigma$ cannot change the picks* (Claim 2),
#   numerical checks: the 10-pass estimate within 1 % of the closed form, and SNR$\cdot\sigma$
#   constant to $10^{-3}$ across $\sigma$.
# - *v1's SNR and Spectrum's weight SNR pick alike*: the effect is the overlap
#   $J$(v1, Spectrum) of the `Largest` picks minus its chance level, expected positive. Smallest
#   effect of interest {glue:text}`sesoi_spec`: less than a fifth of the Jaccard scale, about the
#   change from sharing none of three picked layers to sharing one, would not make two selections
#   alike.

# %%
SESOI = {"robust": 0.3, "spec": 0.2}


def judge_claims(res: dict) -> tuple[dict[str, str], dict[str, stats.Estimate]]:
    """Verdicts on the chapter's claims, and the effects behind them, from one run's results."""
    agree = agreement_table(res["tiny"]).set_index("pair")
    effects = {
        "robust": stats.seed_mean(agree.loc["v1 SNR ~ propagated SNR", "rho"]),
        "spec": stats.seed_mean(
            agree.loc["v1 SNR ~ Spectrum", "J Largest"] - res["chance_jaccard"]
        ),
    }
    judged = {
        "robust": verdicts.judge(effects["robust"], expected="increase", sesoi=SESOI["robust"]),
        "scale": verdicts.check(agree.loc["v1 SNR ~ 1/std(h)", "rho"].mean() > 0.9),
        "mc": verdicts.check(res["base"]["mc_rel_error"] < 0.01),
        "sigma": verdicts.check(res["base"]["sigma_rel_dev"] < 1e-3),
        "spec": verdicts.judge(effects["spec"], expected="increase", sesoi=SESOI["spec"]),
        "auto": verdicts.not_tested("which layers are better needs fine-tuning, see chapter 5"),
    }
    return judged, effects


book_verdicts, book_effects = judge_claims(results)
full = records.committed(cfg.chapter, "full")
no_full = verdicts.not_tested("no full run committed")
full_verdicts, full_effects = (
    (dict.fromkeys(book_verdicts, no_full), {}) if full is None else (judge_claims(full.results))
)
final = book_verdicts if full is None else full_verdicts
report.glue_all(
    {
        **{f"verdict_book_{claim}": v for claim, v in book_verdicts.items()},
        **{f"verdict_full_{claim}": v for claim, v in full_verdicts.items()},
        **{f"verdict_{claim}": v for claim, v in final.items()},
        **{f"effect_{claim}": e for claim, e in book_effects.items()},
        **{f"full_effect_{claim}": full_effects.get(claim, "no run committed") for claim in SESOI},
        **{f"sesoi_{claim}": value for claim, value in SESOI.items()},
    }
)
print(pd.DataFrame({"book": book_verdicts, "full": full_verdicts, "verdict": final}))

# %% [markdown]
# | claim | paper {cite:p}`khadangi2025noise` | ours, `book` | ours, `full` | verdict |
# |---|---|---|---|---|
# | layer SNR identifies robust (high) vs under-regularised (low) layers | abstract; v1 code ranks by eq. {eq}`eq-where-to-inject-noise-snr-v1` | $\rho$(SNR, propagated) = {glue:text}`effect_robust`: {glue:text}`verdict_book_robust` | {glue:text}`full_effect_robust`: {glue:text}`verdict_full_robust` | {glue:text}`verdict_robust` |
# | (Claim 3) v1's SNR is the inverse hidden scale | not stated; follows from the v1 code | mean $\rho$(SNR, 1/std) = {glue:text}`rho_scale_mean`: {glue:text}`verdict_book_scale` | {glue:text}`verdict_full_scale` | {glue:text}`verdict_scale` |
# | (Claim 1) the 10 noise passes of the estimate buy nothing | v1 code (10 passes) | MC vs closed form: {glue:text}`mc_rel_error`: {glue:text}`verdict_book_mc` | {glue:text}`verdict_full_mc` | {glue:text}`verdict_mc` |
# | (Claim 2) the noise level $\sigma$ cannot change the picks | v1 code measures the SNR at the training `noise_std` | SNR$\cdot\sigma$ constant to $10^{-3}$: {glue:text}`verdict_book_sigma` | {glue:text}`verdict_full_sigma` | {glue:text}`verdict_sigma` |
# | v1's SNR and Spectrum's weight SNR pick alike | not claimed; only the name is shared | $J$(v1, Spectrum) - chance = {glue:text}`effect_spec`: {glue:text}`verdict_book_spec` | {glue:text}`full_effect_spec`: {glue:text}`verdict_full_spec` | {glue:text}`verdict_spec` |
# | v2's calibration picks better layers than SNR | v2 code (not in the paper) | v2 picks {glue:text}`base_auto` on the base model | {glue:text}`verdict_full_auto` | {glue:text}`verdict_auto` |
#
# The first row's verdict, {glue:text}`verdict_robust`, is about what the estimator measures:
# at this scale v1's SNR is, layer for layer, the inverse hidden scale
# ({glue:text}`verdict_scale`), and it ranks layers unlike the propagated SNR, the one measurement
# of robustness here. Whatever the paper's choice of `Largest` or `Lowest` achieved, it chose
# layers by the size of their activations. Whether noise *there* helps is chapter 5's question;
# this chapter only shows that the estimator's name promises more than it measures. Our models
# are tiny and the tiny-architecture ones are untrained; the algebra of Claim 2 does not depend
# on either.

# %% [markdown]
# (where-to-inject-noise-full-scale)=
# ## Full-scale results
#
# The `full` preset runs the same code on the 8-layer `full` base model ($k = 3$) and on
# 16-layer tiny models of width 256, five seeds per architecture, on a lent GPU machine. This
# section never recomputes it: where a results file is committed, it is read with the same
# functions as the book run and its verdicts join the table above; the line below says whether
# one is. {glue:text}`full_status`

# %%
report.glue("full_status", records.status(full, cfg.chapter, "full"))
if full is not None:
    base_tables(full.results)
    report.show_table(arch_table(full.results["tiny"]))

# %% [markdown]
# ## Summary
#
# - v1's SNR {eq}`eq-where-to-inject-noise-snr-v1` injects noise proportional to a layer's own
#   scale and measures it back. Its ten Monte-Carlo passes converge to a closed form
#   {eq}`eq-where-to-inject-noise-closed` (here within {glue:text}`mc_rel_error`), and that closed
#   form is $1/(\sigma\,\mathrm{std}(h))$ times a shape constant near {glue:text}`gauss_factor`.
# - So v1 ranks layers by inverse hidden scale ($\rho$ = {glue:text}`rho_scale_mean` over
#   {glue:text}`n_tiny` tiny models of eight architectures): `Largest` = smallest activations,
#   usually early layers; `Lowest` = largest, usually deep ones. $\sigma$ changes nothing.
# - The propagated SNR of the first commit and Spectrum's weight SNR measure other things and
#   pick other layers; v2 replaced all of them with a calibration by KL response.
# - Verdicts: that the SNR identifies robust layers is {glue:text}`verdict_robust` (its rank
#   correlation with the propagated SNR is {glue:text}`effect_robust` over the tiny models); the
#   checks of Claims 1-3 {glue:text}`verdict_mc`, {glue:text}`verdict_sigma` and
#   {glue:text}`verdict_scale`; that v1's and Spectrum's picks overlap beyond chance:
#   {glue:text}`verdict_spec`; that v2's picks are better: {glue:text}`verdict_auto`.
#
# ## Exercises
#
# 1. *Why* does multiplying a layer's output by 10 (a change that an RMSNorm in the next block
#    undoes exactly) divide its v1 SNR by 10? What would a robustness measure have to do instead?
# 2. *Change the code:* give `snr_v1_ref` a fixed base std $b_0 = \sigma$ instead of
#    $\sigma\,\mathrm{std}(h)$ (v2's choice). Derive and check what the SNR measures then.
# 3. *Change the code:* in `score_model`, compute v1's SNR on
#    `layer_outputs(net, b, post_norm_last=True)` (v1's faithful variant, whose last entry comes
#    after the final norm). In which architectures does the last layer move in the ranking, and
#    where does it move to?
# 4. *Run a regime:* `make run NB=notebooks/part1_noisefit/02_where_to_inject_noise.ipynb
#    PRESET=book ARGS="-p n_layers 16 -p k 4"`: do the picks of the propagated SNR move towards
#    v1's as the models get deeper?
#
# :::{dropdown} Hint for exercise 2
# With $b_0 = \sigma$, $s \propto \sigma\,\mathrm{MAD}\,w\,f$ scales like $h$, so
# $\mathrm{SNR} \to \kappa_1/(\sqrt{2/\pi}\,\sigma\,\kappa_2')$ is scale-free: it now ranks
# layers by the *shape* of their activations (heavy tails, outlier features) only.
# :::
#
# ## Further reading
#
# - {cite:t}`khadangi2025noise`: NoiseFiT; its layer selection is what this chapter dissects.
# - {cite:t}`hartford2024spectrum`: Spectrum, a weight-matrix SNR from random-matrix theory, used
#   to choose which layers to train.
