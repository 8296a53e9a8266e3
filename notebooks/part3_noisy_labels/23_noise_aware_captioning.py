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
# (ch-noise-aware-captioning)=
# # Noise-aware captioning: learn from every web pair, then ask for the aligned ones
#
# **Claim.** A captioner trained on web-crawled image-text pairs should neither be trained on
# everything (it learns to emit the poorly aligned text) nor on a similarity-filtered subset (it
# loses the knowledge in the discarded pairs): conditioning it on the pair's bucketed CLIP
# similarity, its *alignment level*, and asking for the top level at inference beats both
# {cite:p}`kang2023noise`.
#
# In this chapter we
# - build web-like noisy captions for scikit-learn's digits, with a caption grammar
#   `<digit> <ink> <width>`, boilerplate captions made the *mode* of the corpus, captions of other
#   images and partial captions;
# - score every pair with a small contrastive dual encoder (our CLIP), bucket the scores into
#   alignment levels exactly as the official code does (checked against it on fixed inputs), and
#   implement NoC: a learned control embedding appended to the image prefix of a GRU decoder;
# - compare NoC at the top level with training on everything and with filtering at three
#   thresholds, over a sweep of the noise fraction, and measure controllability.
#
# Run time: `smoke` about 10 s, `book` (the default) about 50 s on one CPU core; the `book`
# preset carries the verdicts at two noise levels and the committed `full` run, where it exists,
# carries them over five ({ref}`noc-full-scale`).

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
seed = 0  # first training seed; seed s fixes the split, the captions, the scorer and the models
device = "auto"  # auto | cpu (CPU only: the models are too small for a GPU to help)
epochs = None  # captioner epochs over the full corpus (None: the preset's)
n_seeds = None  # training seeds per method and noise level (None: the preset's)
n_bins = None  # alignment levels (None: the preset's; the official code uses 8)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from noisefit_lib import noisy_captions as nc
from noisefit_lib import noisy_labels, plotting, records, report, runtime, stats, verdicts

PRESETS = {
    "smoke": {
        "epochs": 4,
        "n_seeds": 2,
        "noise_levels": [0.8],
        "keep_fractions": [0.3],
        "n_bins": 4,
        "captions_per_image": 3,
        "scorer_steps": 150,
        "batch_size": 64,
        "lr": 3e-3,
    },
    "book": {
        "epochs": 8,
        "n_seeds": 3,
        "noise_levels": [0.5, 0.8],
        "keep_fractions": [0.5, 0.3, 0.15],
        "n_bins": 4,
        "captions_per_image": 3,
        "scorer_steps": 200,
        "batch_size": 64,
        "lr": 3e-3,
    },
    "full": {
        "epochs": 15,
        "n_seeds": 5,
        "noise_levels": [0.4, 0.6, 0.7, 0.8, 0.9],
        "keep_fractions": [0.5, 0.3, 0.15],
        "n_bins": 4,
        "captions_per_image": 3,
        "scorer_steps": 300,
        "batch_size": 64,
        "lr": 3e-3,
    },
}
cfg = runtime.resolve(
    "noise_aware_captioning",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    cpu_only=True,
    threads=1,
    epochs=epochs,
    n_seeds=n_seeds,
    n_bins=n_bins,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# Web image-text pairs are noisy in several ways at once: alt-text boilerplate ("photo for
# sale"), captions that belong to another image, captions that are half right. The usual cure is
# to score each pair with CLIP and *filter*: keep the pairs above a similarity threshold. That
# removes the boilerplate, but also the half-right captions, which still teach most of the words;
# on a small or long-tailed corpus the filtered set may be too small. Training on *everything*
# keeps the knowledge but teaches the captioner to say what the web says most often, which, for
# an image with nothing specific about it, is boilerplate.
#
# NoC {cite:p}`kang2023noise` keeps all the pairs and tells the model how trustworthy each one
# is: the CLIP similarity of the pair, bucketed into a few *alignment levels*, enters the decoder
# as a learned control embedding. The model learns a *family* of captioners, one per level; at
# inference we ask for the top level, the captioner of well-aligned pairs, which still shares
# every weight with the others.

# %% [markdown]
# ## The math
#
# A training pair is an image $I$ and a caption $T = (w_1, \dots, w_L)$. Its alignment score is
# the cosine similarity of a contrastive image encoder $f$ and text encoder $g$:
#
# $$
# s(I, T) = \frac{\langle f(I), g(T) \rangle}{\lVert f(I)\rVert\, \lVert g(T)\rVert} .
# $$ (eq-noise-aware-captioning-score)
#
# The official code fits $K$ uniform bins over $[s_{\min}, s_{\max}]$ of all training scores
# (`KBinsDiscretizer(n_bins=8, strategy="uniform")`) and maps a score to its level with the
# $K - 1$ inner edges $e_k = s_{\min} + k\,(s_{\max} - s_{\min}) / K$:
#
# $$
# z(s) = \#\{k \in \{1, \dots, K-1\} : e_k \le s\} \in \{0, \dots, K - 1\} .
# $$ (eq-noise-aware-captioning-level)
#
# The captioner decodes from a prefix made of the image embedding $E(I)$ and the control
# embedding $c_z$ (a row of a learned $K \times d$ table), trained with token cross-entropy on all
# pairs:
#
# $$
# \mathcal{L} = -\sum_{t=1}^{L} \log p_\theta\big(w_t \mid w_{<t}, [E(I); c_{z(s(I,T))}]\big) ,
# \qquad \hat T = \operatorname{greedy}\, p_\theta(\cdot \mid [E(I); c_{K-1}]) .
# $$ (eq-noise-aware-captioning-loss)
#
# *Vanilla* drops $c_z$ and trains on all pairs; *filtering* drops $c_z$ and trains on the pairs
# with $s \ge \tau$.
#
# **Claim 1 (bucketing):** our {eq}`eq-noise-aware-captioning-level` equals the official
# bucketing on fixed inputs (a check). **Claim 2 (the regime):** at high noise, boilerplate is
# the mode of the captions: more pairs carry one boilerplate string than the image's true caption
# (a check on the corpus). **Claim 3:** NoC at the top level beats vanilla in caption accuracy.
# **Claim 4:** NoC beats filtering, at each of several thresholds. **Claim 5
# (controllability):** NoC's accuracy rises with the control level: top level minus bottom level
# is positive. Claims 3-5 expect an *increase*.

# %% [markdown]
# ## Implementation
#
# | symbol | code |
# |---|---|
# | $f$, $g$, $s$ | `nc.DualEncoder`, `nc.alignment_scores` |
# | $e_k$, $z(s)$, $K$ | `edges`, `levels(...)`, `cfg.n_bins` |
# | $E$, $c_z$ | `Captioner.image`, `Captioner.control` |
# | $\hat T$ | `Captioner.generate` |
#
# ### The data
#
# Each digit gets three attributes read from its pixels: its class, its ink (`bold` when its mean
# pixel is above the training median, else `thin`) and its width (`wide` when at least the
# median number of columns holds ink). Its clean caption is `<digit> <ink> <width>`, e.g.:

# %%
demo_split = noisy_labels.load_digits_split(rng=runtime.numpy_stream(cfg.seed, "data"))
demo_thresholds = nc.fit_thresholds(demo_split.x_train)
demo_attrs = nc.attributes(demo_split.x_train, demo_split.y_train, demo_thresholds)
demo_corpus = nc.noisy_corpus(
    demo_attrs[:4], 0.8, captions_per_image=3, rng=runtime.numpy_stream(0, "demo")
)
for image, tokens, kind in zip(
    demo_corpus.image, demo_corpus.tokens, demo_corpus.kind, strict=True
):
    clean = nc.decode_words(nc.clean_caption(demo_attrs[image])[0])
    print(f"image {image} ({clean}): {nc.decode_words(tokens):<20} [{nc.NOISE_KINDS[kind]}]")

# %% [markdown]
# A share $r$ of the captions (the *noise fraction*) is replaced: 60 % of the replaced ones by
# one of three boilerplate strings that share their first word (`photo ...`), 20 % by the caption
# of another image, 20 % by a partial caption (one attribute changed). With three captions per
# training image and $r = 0.8$, 48 % of pairs are boilerplate and 20 % clean.
#
# ### The alignment level {eq}`eq-noise-aware-captioning-level`
#
# The scorer is a small dual encoder trained with CLIP's symmetric InfoNCE loss on the clean
# captions of the held-out validation images: like CLIP in the paper, it is *external* to the
# captioning corpus, never sees a boilerplate word, and judges pairs it was not trained on.


# %%
def fit_edges(scores, n_levels):
    """K + 1 uniform edges over [min, max] of the training scores."""
    return np.linspace(float(scores.min()), float(scores.max()), n_levels + 1)


def levels(scores, edges):
    """z(s): the number of inner edges e_1..e_{K-1} at or below s (float32, as the official)."""
    inner = torch.tensor(edges[1:-1], dtype=torch.float32)
    return (torch.as_tensor(scores, dtype=torch.float32)[:, None] >= inner).sum(1)


demo_scores = torch.tensor([-0.2, 0.0, 0.1, 0.35, 0.6, 0.9])
demo_edges = fit_edges(demo_scores, 4)
print(demo_edges.round(3), levels(demo_scores, demo_edges).tolist())

# %% [markdown]
# ### The captioner {eq}`eq-noise-aware-captioning-loss`
#
# An MLP image encoder $E$ gives one prefix vector; NoC appends the control embedding $c_z$ as a
# second prefix vector (as `get_prefix_embedding` does in the official
# `noc/models/lightning/captioner.py`); a GRU reads the prefix and then the caption's words and
# predicts each next word. Vanilla and filtering use the same model without the control row.


# %%
class Captioner(torch.nn.Module):
    """GRU decoder over the prefix [E(I); c_z] (NoC) or [E(I)] (n_levels = 0)."""

    def __init__(self, n_levels, *, generator, dim=64, hidden=128):
        super().__init__()
        self.image = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim)
        )
        self.control = torch.nn.Embedding(n_levels, dim) if n_levels else None
        self.words = torch.nn.Embedding(len(nc.VOCAB), dim)
        self.gru = torch.nn.GRU(dim, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, len(nc.VOCAB))
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    p.normal_(0, p.shape[-1] ** -0.5, generator=generator)

    def prefix(self, x, z):
        parts = [self.image(x)[:, None]]
        if self.control is not None:
            parts.append(self.control(z)[:, None])
        return torch.cat(parts, 1)

    def forward(self, x, z, tokens):
        """Next-word logits (N, L, V) for teacher forcing on tokens (N, L)."""
        hidden, _ = self.gru(torch.cat([self.prefix(x, z), self.words(tokens[:, :-1])], 1))
        return self.out(hidden[:, -nc.CAPTION_LEN :])

    @torch.no_grad()
    def generate(self, x, z):
        """Greedy captions (N, L) from the prefix."""
        hidden, state = self.gru(self.prefix(x, z))
        words = []
        for _ in range(nc.CAPTION_LEN):
            word = self.out(hidden[:, -1]).argmax(-1)
            words.append(word)
            hidden, state = self.gru(self.words(word)[:, None], state)
        return torch.stack(words, 1)


def train_captioner(x, z, tokens, n_levels, run_seed, steps):
    """Adam on token cross-entropy for a fixed number of steps (equal for every method)."""
    model = Captioner(n_levels, generator=runtime.stream(run_seed, "init"))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = runtime.stream(run_seed, "batches")
    done = 0
    while done < steps:
        for idx in torch.randperm(len(x), generator=batches).split(cfg.batch_size):
            logits = model(x[idx], z[idx], tokens[idx])
            loss = F.cross_entropy(logits.reshape(-1, len(nc.VOCAB)), tokens[idx].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


demo_model = Captioner(4, generator=torch.Generator().manual_seed(0))
print(
    demo_model(torch.rand(2, 64), torch.tensor([0, 3]), torch.zeros(2, 3, dtype=torch.long)).shape
)

# %% [markdown]
# ## Checks
#
# ### Claim 1: the bucketing equals the official code's
#
# The official bucketing is `KBinsDiscretizer(strategy="uniform")` fitted on all training scores
# (`preprocess/get_noc_bucket.py`) and `torch.bucketize(s, edges[1:-1], right=True)`
# (`AlignmentLevelBucket` in `noc/models/bucketing/bucketing.py`, `kakaobrain/noc` commit
# `7a3a629`). We ran both once, outside this repository, on seeded scores, the edges themselves
# and out-of-range scores, and committed the inputs' recipe and the outputs
# (`tests/fixtures/noc_bucket_reference.json`); `tests/test_noc_bucket_reference.py` asserts that
# `nc.fit_bin_edges` and `nc.bucketize` reproduce them. Here the chapter's functions must equal
# the library's, and scikit-learn's discretiser, on random scores and on the edges exactly.

# %%
from sklearn.preprocessing import KBinsDiscretizer

gen = np.random.default_rng(5)
check_scores = gen.normal(0.25, 0.1, 500)
check_edges = fit_edges(check_scores, 8)
query = np.concatenate([check_scores, check_edges, [-1.0, 2.0]])
ours = levels(query, check_edges)
library = nc.bucketize(torch.tensor(query), nc.fit_bin_edges(check_scores, 8))
sk = KBinsDiscretizer(n_bins=8, encode="ordinal", strategy="uniform").fit(check_scores[:, None])
edge_error = np.abs(sk.bin_edges_[0] - check_edges).max()
sk_levels = sk.transform(check_scores[:, None])[:, 0].astype(int)
bucket_ok = (
    torch.equal(ours, library)
    and edge_error < 1e-12
    and np.array_equal(ours[:500].numpy(), sk_levels)
    and ours[-2].item() == 0
    and ours[-1].item() == 7
)
assert bucket_ok
print(f"levels equal the library's and scikit-learn's; max edge error {edge_error:.1e}")

# %% [markdown]
# ### Claim 2: the regime, boilerplate as the mode
#
# NoC can only matter where training on everything goes wrong. With a share $b$ of boilerplate
# pairs and $c$ of clean ones, greedy decoding's first word is `photo` when $b$ exceeds the mass
# on the right digit word, $c + \tfrac23 p + \tfrac1{10} w$ (partial captions keep the digit with
# probability 2/3, swapped ones with about 1/10). With the mix above that is $0.6\,r > 1 -
# 0.847\,r$, i.e. $r > 0.69$: at $r = 0.8$ boilerplate must be the mode, at $r = 0.5$ it must not.
# We check it on the drawn corpora (the first training seed).


# %%
def first_word_shares(noise, run_seed):
    """Shares of pairs whose first word is boilerplate, and is the image's true digit word."""
    split = noisy_labels.load_digits_split(rng=runtime.numpy_stream(run_seed, "data"))
    attrs = nc.attributes(split.x_train, split.y_train, nc.fit_thresholds(split.x_train))
    corpus = nc.noisy_corpus(
        attrs, noise, captions_per_image=3, rng=runtime.numpy_stream(run_seed, "captions")
    )
    truth = nc.clean_caption(attrs[corpus.image])
    boiler = corpus.share("boilerplate")
    return boiler, float((corpus.tokens[:, 0] == truth[:, 0]).mean()), corpus.share("clean")


mode_rows = []
for noise in (0.5, 0.8):
    boiler, right_first, clean = first_word_shares(noise, cfg.seed)
    mode_rows.append(
        {"noise": noise, "boilerplate": boiler, "right digit word": right_first, "clean": clean}
    )
mode_table = pd.DataFrame(mode_rows)
report.show_table(mode_table, digits=3)
mode_ok = bool(
    (mode_table["boilerplate"] > mode_table["right digit word"]).tolist() == [False, True]
)
assert mode_ok

# %%
checks = report.glue_all(
    {
        "noc_bucket_verdict": verdicts.check(bucket_ok),
        "noc_mode_verdict": verdicts.check(mode_ok),
        "noc_boiler_08": mode_table["boilerplate"].iloc[1],
        "noc_right_08": mode_table["right digit word"].iloc[1],
    }
)

# %% [markdown]
# ## Experiment
#
# **The regime.** About 1080 training digits, three captions each, so the filtered sets are
# small (the knowledge-loss regime); the noise fraction is swept over `noise_levels`, across the
# point where boilerplate becomes the mode. Under each seed (which fixes the split, the captions,
# the scorer and every model's initialisation and batch order) we train: *vanilla* on all pairs;
# *filter keep q* on the pairs whose score is in the top share $q$ (thresholds at the 50 %, 70 %
# and 85 % quantiles; the paper's baseline uses a fixed CLIP threshold of 0.3 on CC3M); *NoC*
# with $K$ = `n_bins` uniform levels. Every method gets the same number of gradient steps
# (`epochs` passes over the full corpus), so filtering is not handicapped by seeing fewer batches.
# We decode greedily on the clean test digits and score *exact match* (all three attributes
# right), per-attribute accuracy and the boilerplate rate. NoC is decoded at every level; its
# top level is the method, the rest is the controllability curve.


# %%
def run_condition(noise, run_seed):
    """All methods for one noise level and seed: one row per method (and NoC level)."""
    split = noisy_labels.load_digits_split(rng=runtime.numpy_stream(run_seed, "data"))
    thresholds = nc.fit_thresholds(split.x_train)
    attrs = {
        name: nc.attributes(getattr(split, f"x_{name}"), getattr(split, f"y_{name}"), thresholds)
        for name in ("train", "val", "test")
    }
    corpus = nc.noisy_corpus(
        attrs["train"],
        noise,
        captions_per_image=cfg.captions_per_image,
        rng=runtime.numpy_stream(run_seed, "captions"),
    )
    scorer = nc.train_scorer(
        split.x_val,
        torch.from_numpy(nc.clean_caption(attrs["val"])),
        generator=runtime.stream(run_seed, "scorer"),
        steps=cfg.scorer_steps,
    )
    x, tokens = split.x_train[corpus.image], torch.from_numpy(corpus.tokens)
    scores = nc.alignment_scores(scorer, x, tokens)  # eq. (score)
    z = levels(scores, fit_edges(scores, cfg.n_bins))  # eq. (level)
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    n_test = len(split.x_test)
    base = {"noise": noise, "seed": run_seed}
    clean_top = float((z[corpus.kind == 0] == cfg.n_bins - 1).float().mean())
    base["clean_in_top"] = clean_top

    def evaluate(model, level):
        generated = model.generate(split.x_test, torch.full((n_test,), level)).numpy()
        return nc.caption_metrics(generated, attrs["test"])

    rows = []
    model = train_captioner(x, z * 0, tokens, 0, run_seed, steps)
    rows.append({**base, "method": "vanilla", "kept": 1.0, **evaluate(model, 0)})
    for keep in cfg.keep_fractions:
        mask = scores >= torch.quantile(scores, 1 - keep)
        model = train_captioner(x[mask], z[mask] * 0, tokens[mask], 0, run_seed, steps)
        method = f"filter keep {round(100 * keep)}%"
        rows.append(
            {**base, "method": method, "kept": float(mask.float().mean())} | evaluate(model, 0)
        )
    model = train_captioner(x, z, tokens, cfg.n_bins, run_seed, steps)  # eq. (loss)
    for level in range(cfg.n_bins):
        name = "NoC" if level == cfg.n_bins - 1 else f"NoC z={level}"
        rows.append({**base, "method": name, "level": level, "kept": 1.0, **evaluate(model, level)})
    return rows


start = time.perf_counter()
runs = pd.DataFrame(
    [
        row
        for noise in cfg.noise_levels
        for s in range(cfg.n_seeds)
        for row in run_condition(noise, cfg.seed + s)
    ]
)
wall_s = time.perf_counter() - start
records.save(cfg, {"runs": runs})
print(f"{len(runs)} rows from {len(cfg.noise_levels) * cfg.n_seeds} (noise, seed) conditions")

# %% tags=["nbval-ignore-output"]
print(f"experiment wall time: {wall_s:.1f} s")

# %% [markdown]
# ## Results
#
# ### Effects, paired by seed
#
# One function turns a table of runs into the claims' effects and verdicts; the committed `full`
# run is judged by the same function. The smallest effect of interest is **0.05 of exact match**
# (27 of the 540 test digits) for claims 3 and 5, a change in caption quality a reader of the
# captions would notice, and **0.03** for claim 4 (a gain below 3 points would not justify
# NoC's extra machinery, a scorer's levels and a control embedding, over a single threshold).

# %%
SESOI = {"3": 0.05, "4": 0.03, "5": 0.05}


def judge(runs):
    """One row per claim, noise level and baseline: the paired effect on exact match, verdict."""
    parts = []
    bottom = runs[runs["method"] == "NoC z=0"]
    comparisons = [("3 NoC - vanilla", "vanilla", "3")]
    comparisons += [
        (f"4 NoC - {m}", m, "4") for m in dict.fromkeys(runs["method"]) if m.startswith("filter")
    ]
    comparisons.append(("5 NoC top - bottom level", "NoC z=0", "5"))
    for claim, baseline, key in comparisons:
        pair = runs[runs["method"].isin(["NoC", baseline])]
        if baseline == "NoC z=0":
            pair = pd.concat([runs[runs["method"] == "NoC"], bottom])
        effect = stats.paired_effects(pair, "exact", baseline, by=["noise"])
        parts.append(effect.assign(claim=claim, sesoi=SESOI[key]))
    effects = pd.concat(parts, ignore_index=True)
    effects["effect"] = [stats.estimate_of(row).text() for _, row in effects.iterrows()]
    effects["verdict"] = [
        verdicts.judge(stats.estimate_of(row), expected="increase", sesoi=row["sesoi"])
        for _, row in effects.iterrows()
    ]
    return effects


effects = judge(runs)
report.show_table(effects, columns=["claim", "noise", "effect", "n", "verdict"])

# %% [markdown]
# The means over seeds (exact match, digit-word accuracy, boilerplate rate, and the share of
# pairs each method trained on):

# %%
METRICS = ("exact", "digit_acc", "boilerplate", "kept")
means = {m: stats.summarise(runs, m, by=["noise", "method"]) for m in METRICS}
wide = means["exact"][["noise", "method"]].copy()
for m in METRICS:
    wide[m] = means[m]["mean"].to_numpy()
report.show_table(wide, digits=3)


# %%
def plot_results(means, runs):
    """Left: exact match per method and noise; right: NoC's exact match against its level."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    methods = [m for m in dict.fromkeys(runs["method"]) if not m.startswith("NoC z")]
    for k, method in enumerate(methods):
        rows = means["exact"].query("method == @method")
        err = np.nan_to_num(np.vstack([rows["mean"] - rows["low"], rows["high"] - rows["mean"]]))
        x = np.arange(len(rows)) + (k - (len(methods) - 1) / 2) * 0.12
        style = {**plotting.style(k), "linestyle": "none"}
        axes[0].errorbar(x, rows["mean"], yerr=err, label=method, capsize=3, **style)
    noise_levels = list(dict.fromkeys(runs["noise"]))
    axes[0].set_xticks(np.arange(len(noise_levels)), [f"{n:.0%}" for n in noise_levels])
    axes[0].set_xlabel("noise fraction of the captions")
    axes[0].set_ylabel("exact attribute match (test)")
    axes[0].legend(fontsize=7)
    noc = runs[runs["method"].str.startswith("NoC")]
    for k, (noise, rows) in enumerate(noc.groupby("noise", sort=False)):
        summary = stats.summarise(rows, "exact", by=["level"])
        style = plotting.style(k)
        axes[1].plot(summary["level"], summary["mean"], label=f"noise {noise:.0%}", **style)
        band = summary["low"].fillna(summary["mean"]), summary["high"].fillna(summary["mean"])
        axes[1].fill_between(summary["level"], *band, color=style["color"], alpha=0.2)
    axes[1].set_xlabel("control level z at inference")
    axes[1].set_ylabel("exact attribute match (test)")
    axes[1].legend()
    fig.tight_layout()
    return fig


report.glue_figure("fig-noise-aware-captioning-results", plot_results(means, runs))

# %% [markdown]
# ```{glue:figure} fig-noise-aware-captioning-results
# :name: fig-noise-aware-captioning-results
#
# Left: exact attribute match of greedy captions on the clean test digits, per method and noise
# fraction. Right: NoC's exact match as the control level at inference goes from the lowest to
# the top level (controllability). Points and lines: mean over seeds; bars and bands: 95 %
# t-interval over seeds.
# ```


# %%
def headline(effects, runs, prefix):
    """Glue values at the run's highest noise level, and verdict counts over noise levels."""
    high = max(runs["noise"])
    values = {}
    for key, number in (("vanilla", "3"), ("filter", "4"), ("control", "5")):
        rows = effects[effects["claim"].str.startswith(number)]
        at_high = rows[rows["noise"] == high]
        if key == "filter":  # the strongest filter at the highest noise: the smallest gain
            at_high = at_high.loc[[at_high["mean"].idxmin()]]
            values[f"{prefix}_best_filter"] = at_high["claim"].iloc[0].removeprefix("4 NoC - ")
        values[f"{prefix}_{key}"] = at_high["effect"].iloc[0]
        values[f"{prefix}_{key}_verdict"] = at_high["verdict"].iloc[0]
        counts = rows["verdict"].value_counts()
        values[f"{prefix}_{key}_repro"] = int(counts.get(verdicts.REPRODUCED, 0))
        values[f"{prefix}_{key}_rows"] = len(rows)
    mean = runs.groupby(["noise", "method"])[["exact", "boilerplate"]].mean()
    values[f"{prefix}_high"] = high
    values[f"{prefix}_exact_noc"] = mean.loc[(high, "NoC"), "exact"]
    values[f"{prefix}_exact_vanilla"] = mean.loc[(high, "vanilla"), "exact"]
    values[f"{prefix}_boiler_vanilla"] = mean.loc[(high, "vanilla"), "boilerplate"]
    values[f"{prefix}_boiler_noc"] = mean.loc[(high, "NoC"), "boilerplate"]
    return values


book = report.glue_all(
    {**headline(effects, runs, "noc"), "noc_n_seeds": cfg.n_seeds, "noc_n_bins": cfg.n_bins}
)

# %% [markdown]
# At {glue:text}`noc_high` noise (boilerplate is the mode), vanilla training produces
# boilerplate for {glue:text}`noc_boiler_vanilla` of the test digits and reaches an exact match of
# {glue:text}`noc_exact_vanilla`; NoC at its top level produces boilerplate for
# {glue:text}`noc_boiler_noc` and reaches {glue:text}`noc_exact_noc` (means over
# {glue:text}`noc_n_seeds` seeds). Claim 3, NoC above vanilla: {glue:text}`noc_vanilla`
# (*{glue:text}`noc_vanilla_verdict`*; {glue:text}`noc_vanilla_repro` of
# {glue:text}`noc_vanilla_rows` noise levels reproduced). Claim 4, NoC above filtering, against
# its strongest competitor here ({glue:text}`noc_best_filter`): {glue:text}`noc_filter`
# (*{glue:text}`noc_filter_verdict`*; {glue:text}`noc_filter_repro` of
# {glue:text}`noc_filter_rows` threshold-and-noise comparisons reproduced). Claim 5,
# controllability, top minus bottom level: {glue:text}`noc_control`
# (*{glue:text}`noc_control_verdict`*; {glue:text}`noc_control_repro` of
# {glue:text}`noc_control_rows`). The effect table gives every comparison's verdict.
#
# The right panel of {numref}`fig-noise-aware-captioning-results` is the mechanism: the low
# levels are the captioner of boilerplate and wrong captions, the top level that of aligned
# ones, and they share every weight. Filtering is the strong baseline here: its better
# thresholds keep the well-aligned pairs and drop most boilerplate, and whether NoC's top level
# beats them is claim 4's row of the effect table, threshold by threshold.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# The paper trains on CC3M (a 6-layer decoder with a CLIP ViT-L/14 prefix, 8 alignment levels)
# and evaluates zero-shot on COCO, nocaps and Flickr30k; its Table 1 reports NoC above vanilla
# and filtering in CIDEr, SPICE and CLIP-S. We did not verify the table's numbers (the research
# notes mark them [verify]), so we quote none. The official defaults we did read: 8 bins,
# `KBinsDiscretizer(strategy="uniform")`, a filtering threshold of 0.3 on CLIP similarity.
# Ours: digits, `book` preset with {glue:text}`noc_n_seeds` seeds at {glue:text}`noc_high`
# noise, and the `full` run (a named long CPU run, {ref}`noc-full-scale`) with
# {glue:text}`noc_full_n_seeds` seeds at {glue:text}`noc_full_high` noise, its highest level.
# Where the `full` run exists, its verdict is the chapter's.
#
# | claim | paper {cite:p}`kang2023noise` | ours, `book` (CPU) | verdict, `book` | ours, `full` (CPU) | verdict, `full` |
# |---|---|---|---|---|---|
# | 1. bucketing = official | `AlignmentLevelBucket` | equal levels on fixed inputs | {glue:text}`noc_bucket_verdict` | same check | same check |
# | 2. boilerplate is the mode at high noise | (web data, not a claim) | {glue:text}`noc_boiler_08` vs {glue:text}`noc_right_08` of first words | {glue:text}`noc_mode_verdict` | same check | same check |
# | 3. NoC beats vanilla | Table 1 (numbers not verified) | exact match, NoC - vanilla {glue:text}`noc_vanilla` | {glue:text}`noc_vanilla_verdict` | {glue:text}`noc_full_vanilla` | {glue:text}`noc_full_vanilla_verdict` |
# | 4. NoC beats filtering | Table 1 (numbers not verified) | NoC - {glue:text}`noc_best_filter` {glue:text}`noc_filter` | {glue:text}`noc_filter_verdict` | NoC - {glue:text}`noc_full_best_filter` {glue:text}`noc_full_filter` | {glue:text}`noc_full_filter_verdict` |
# | 5. controllability | analysis of the levels (not verified) | top - bottom level {glue:text}`noc_control` | {glue:text}`noc_control_verdict` | {glue:text}`noc_full_control` | {glue:text}`noc_full_control_verdict` |
#
# **Why they agree or differ.** The vanilla failure is engineered, and it appears exactly where
# claim 2 says it must: once boilerplate is the mode, greedy decoding starts with `photo`. NoC
# does not need the boilerplate removed, only labelled, and our scorer labels it well because it
# never saw boilerplate words. The comparison with filtering is the delicate one. Our filtering
# gets the same number of gradient steps as NoC and a threshold picked from three; with a scorer
# that separates clean from boilerplate pairs this well, the filtered set is nearly the clean
# set, and the knowledge NoC keeps (partial captions, two attributes in three right) is worth
# only a little on a task of 40 distinct captions. NoC also spends its (equal) gradient steps on
# every level's captioner, while a filter spends them all on the well-aligned pairs. The
# paper's regime, millions of pairs with a long tail of concepts that appear mostly in poorly
# aligned captions, is where discarding pairs costs most; exercise 2 moves our task towards it.

# %% [markdown]
# (noc-full-scale)=
# ## Full-scale results
#
# The `full` preset (five noise levels from 0.4 to 0.9, five seeds, 15 epochs, a longer-trained
# scorer) runs on this book's 2-core CPU in about six minutes; its results file, once committed
# as a named long CPU run, is judged here by the same `judge` function, and where it exists its
# verdicts are the chapter's. {glue:text}`noc_full_status`

# %%
CLAIM_KEYS = ("vanilla", "filter", "control")
COLUMN = [*CLAIM_KEYS, *(f"{key}_verdict" for key in CLAIM_KEYS), "high", "best_filter"]
full = records.committed(cfg.chapter, "full")
report.glue("noc_full_status", records.status(full, cfg.chapter, "full"))
full_values = None
if full is not None:
    full_runs = full.table("runs")
    full_effects = judge(full_runs)
    report.show_table(full_effects, columns=["claim", "noise", "effect", "n", "verdict"])
    full_values = headline(full_effects, full_runs, "noc_full")
    full_values["noc_full_n_seeds"] = int(full_runs["seed"].nunique())
said_keys = [*(f"{key}_verdict" for key in CLAIM_KEYS), "high"]
_ = report.glue_all(
    {
        **report.full_column(full_values, [*COLUMN, "n_seeds"], "noc_full"),
        # the verdicts the chapter states: the full run's where it exists
        **report.carried(
            book, full_values, said_keys, book_prefix="noc", full_prefix="noc_full", to="noc_said"
        ),
    }
)

# %% [markdown]
# ## Summary
#
# - NoC scores every web pair with a contrastive model, buckets the scores into alignment levels
#   {eq}`eq-noise-aware-captioning-level` (equal to the official bucketing:
#   *{glue:text}`noc_bucket_verdict`*), and feeds the level to the decoder as a learned prefix
#   embedding; at inference it asks for the top level.
# - With boilerplate the mode of the captions (*{glue:text}`noc_mode_verdict`*), NoC beats
#   training on everything (*{glue:text}`noc_said_vanilla_verdict`* at {glue:text}`noc_said_high`
#   noise, in the {glue:text}`noc_said_run` run) and its output quality follows the control
#   (*{glue:text}`noc_said_control_verdict`*); against the strongest filter the verdict is
#   *{glue:text}`noc_said_filter_verdict`*.
# - The catch: NoC's top level is only as good as the scorer's ranking, and filtering with a
#   good scorer and a well-chosen threshold is a strong, simpler baseline on a small task.
#
# ## Exercises
#
# 1. *Why* does the top level need no clean pairs of its own to be useful for every digit? Look at
#    which weights the levels share.
# 2. *Run a regime:* run the `full` preset (noise up to 0.9, five seeds), or set
#    `captions_per_image` to 1 in `PRESETS` so that every filtered set is a third as large: does
#    NoC's gap to the strongest filter grow as the filtered set shrinks?
# 3. *Change the code:* train the scorer on the noisy corpus itself (as CLIP is trained on web
#    pairs) instead of the clean validation split. What happens to the boilerplate's scores, the
#    levels and NoC?
# 4. *Change the code:* use 8 levels (the official number). Does the top level still hold enough
#    pairs to learn from?
#
# :::{dropdown} Hint for exercise 1
# Only the control row $c_z$ differs between levels; the image encoder, the word embeddings and
# the GRU see every pair, so what the partial and boilerplate pairs teach about images and words
# is available at the top level too.
# :::
#
# ## Further reading
#
# - {cite:t}`kang2023noise`: the paper, with retrieval-based evaluations and an analysis of the
#   levels; code in `kakaobrain/noc`.
# - {cite:t}`radford2021learning`: CLIP, the contrastive scorer the paper buckets.
