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
# (ch-noise-in-chains-of-thought)=
# # Noise in chains of thought: static errors, propagated errors
#
# **Claim.** Fine-tuned on algorithmic chains of thought whose steps contain errors, a model is
# very robust to *static* noise, errors written into a finished trace, even at high rates, but
# is hurt much more by lower rates of *dynamic* noise, errors made while the computation runs,
# which propagate into every later step and the answer {cite:p}`havrilla2024tint`.
#
# In this chapter we
# - define both corruptions on a task with a running state (sums of single digits, traced as
#   running totals), derive how many training answers each one makes wrong, and check it on the
#   generated data;
# - implement both from scratch and check them against the library's generator;
# - train a small character-level transformer from scratch on clean, statically and
#   dynamically corrupted traces, and compare the clean test accuracy at the same nominal rate
#   and at a matched share of wrong training answers.
#
# Run time: `smoke` about 10 s, `book` (the default) about 40 s on one CPU core. Where a `full`
# run is committed, its verdicts are the chapter's ({ref}`tint-full-scale`).

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
seed = 0  # first training seed; seed s fixes the documents, the init and the batches
device = "auto"  # auto | cpu | cuda
n_seeds = None  # training seeds per condition (None: the preset's)
steps = None  # optimiser steps per run (None: the preset's)
n_docs = None  # training documents per run (None: the preset's)

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from noisefit_lib import nanogpt, plotting, records, report, runtime, stats, verdicts
from noisefit_lib import traced_integers as ti

with warnings.catch_warnings():  # tqdm's "IProgress not found" names a local path: not stored
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

CONDITIONS = [["clean", 0.0, 0.0], ["static", 0.3, 1.0], ["dynamic", 0.1, 1.0],
              ["dynamic", 0.3, 1.0]]  # fmt: skip
PRESETS = {
    "smoke": {
        "n_operands": 4,
        "n_docs": 400,
        "steps": 40,
        "batch_size": 32,
        "d_model": 32,
        "n_layer": 1,
        "n_head": 2,
        "lr": 3e-3,
        "n_test": 50,
        "n_seeds": 1,
        "conditions": CONDITIONS,
    },
    "book": {
        "n_operands": 4,
        "n_docs": 2000,
        "steps": 300,
        "batch_size": 64,
        "d_model": 48,
        "n_layer": 2,
        "n_head": 4,
        "lr": 3e-3,
        "n_test": 200,
        "n_seeds": 2,
        "conditions": CONDITIONS,
    },
    "full": {
        "n_operands": 6,
        "n_docs": 6000,
        "steps": 3000,
        "batch_size": 64,
        "d_model": 64,
        "n_layer": 2,
        "n_head": 4,
        "lr": 3e-3,
        "n_test": 500,
        "n_seeds": 3,
        "conditions": [
            *CONDITIONS,
            ["static", 0.6, 1.0],
            ["static", 0.3, 0.5],
            ["dynamic", 0.3, 0.5],
        ],
    },
}
cfg = runtime.resolve(
    "noise_in_chains_of_thought",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    threads=1,
    n_seeds=n_seeds,
    steps=steps,
    n_docs=n_docs,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# A chain of thought is a computation written out step by step. When a training set of such
# traces has errors, *where* an error comes from matters. Copy a correct trace and let a typist
# mistype some digits: each error stays where it is, and the next line is again right (static
# noise). Let instead the *computation* slip, a wrong carry, a misread number, and continue
# from the wrong value: every later line, and the answer, inherit the error, and the trace is
# wrong but consistent (dynamic noise). {cite:t}`havrilla2024tint` build a framework of traced
# integers (TInt) whose arithmetic records every intermediate value, corrupt it either way, and
# fine-tune language models on the results: static noise barely hurts, even when every
# document is corrupted; dynamic noise hurts at much lower rates.
#
# We rebuild the experiment at a size a CPU can train from scratch. The task keeps the one
# property that makes the distinction meaningful, a running state: sum single digits and write
# each running total,
#
# ```text
# 3+5+9+1=03;08;17;18>18#
# ```
#
# The prompt ends at `=`; the model writes the trace, `>`, the answer and `#`.
#
# ## The math
#
# Write $s_k = x_1 + \dots + x_k$ for the running totals of $n$ digits, each written with
# $W = 2$ digits, and let $c_p(v)$ resample each digit of $v$ uniformly from $0, \dots, 9$
# with probability $p$. A share `doc` of the documents is corrupted; in a corrupted document
#
# $$
# \text{static:}\quad \tilde s_k = c_p(s_k), \quad \tilde a = c_p(s_n);
# \qquad
# \text{dynamic:}\quad \tilde s_k = c_p\big((\tilde s_{k-1} + x_k) \bmod 10^W\big),
# \quad \tilde a = \tilde s_n .
# $$ (eq-tint-noise)
#
# A resampled digit keeps its value with probability $1/10$, so a digit changes with
# probability $0.9p$ and a two-digit number survives with probability $(1 - 0.9p)^2$. Under
# static noise the answer is one such draw; under dynamic noise it is wrong as soon as any of
# the $n$ states slipped (up to the rare slip that happens to cancel):
#
# $$
# P_\text{static}(\tilde a \ne s_n) = 1 - (1 - 0.9p)^2, \qquad
# P_\text{dynamic}(\tilde a \ne s_n) \approx 1 - (1 - 0.9p)^{2n}.
# $$ (eq-tint-wrong)
#
# At $p = 0.3$ and $n = 4$ that is 47 % of static answers and 92 % of dynamic ones. This is
# the paper's mechanism in one line: at the same nominal $p$, dynamic noise corrupts far more of
# what the model learns from. The fair comparison is therefore also at a *matched* share of
# wrong answers: dynamic noise at $p = 0.1$ makes about as many wrong answers (53 %) as static
# noise at $p = 0.3$.
#
# One more property frames what to expect. Per digit, the correct value stays the most likely
# one under both noises (probability $1 - 0.9p$ against $p/10$ for each other digit), so a model
# that learned the exact conditional distributions would decode every step correctly with
# greedy decoding whatever $p < 1$. Any harm is a finite-data, finite-capacity effect: the
# question is which noise wastes more of the evidence a model of a given size sees.
#
# ## Implementation
#
# | what | code |
# |---|---|
# | corruption $c_p$, static and dynamic documents {eq}`eq-tint-noise` | `corrupt`, `static_document`, `dynamic_document` below (the library's `traced_integers` is checked equal) |
# | data sets with a share `doc` corrupted | `ti.dataset(n, kind, p, doc, rng, n_operands)` |
# | the model | `nanogpt.NanoGPT` (Part II's decoder), trained by `nanogpt.train_lm` |
# | greedy exact-match accuracy on clean held-out problems | `accuracy` below |


# %%
def corrupt(value, p, rng):
    """c_p: resample each of the W digits of `value` uniformly with probability p."""
    digits = [int(c) for c in f"{value:0{ti.WIDTH}d}"]
    for i in range(ti.WIDTH):
        if rng.random() < p:
            digits[i] = int(rng.integers(10))
    return int("".join(map(str, digits)))


def static_document(operands, p, rng):
    """Corrupt the finished trace and the answer; nothing is recomputed."""
    totals = np.cumsum(operands).tolist()
    trace = tuple(corrupt(v, p, rng) for v in totals)
    return trace, corrupt(totals[-1], p, rng)


def dynamic_document(operands, p, rng):
    """Corrupt each running total as it is computed and continue from the corrupted value."""
    state, trace = 0, []
    for x in operands:
        state = corrupt((state + x) % 10**ti.WIDTH, p, rng)
        trace.append(state)
    return tuple(trace), trace[-1]


# %% [markdown]
# The same draws in the same order as the library's generator give the same documents:

# %%
rng_ours, rng_lib = np.random.default_rng(7), np.random.default_rng(7)
for _ in range(300):
    ops = tuple(int(v) for v in rng_ours.integers(0, 10, cfg.n_operands))
    rng_lib.integers(0, 10, cfg.n_operands)  # keep the two generators in step
    for kind, ours in (("static", static_document), ("dynamic", dynamic_document)):
        trace, answer = ours(ops, 0.3, rng_ours)
        doc = ti.make_document(ops, kind, 0.3, True, rng_lib)
        assert (trace, answer) == (doc.trace, doc.answer), (kind, ops)
example = ti.make_document((3, 5, 9, 1), "dynamic", 0.3, True, np.random.default_rng(3))
print(ti.make_document((3, 5, 9, 1), "clean", 0, False, None).text, "| dynamic:", example.text)
print("checked: our corruptions equal the library's on 300 problems")

# %% [markdown]
# The library is in turn tested against the official TInt code (`Dahoas/transformer_arithmetic`,
# commit `7e5fe0a`): we ran its static noise (`add_char_noise`, `add_static_noise`) and its
# noisy `TInt` constructor (dynamic noise) once, outside this repository, on fixed numerals with
# fixed seeds, and committed only counts of their outputs (`tests/fixtures/tint_reference.json`).
# The official code draws from torch's and numpy's global generators, so
# `tests/test_tint_reference.py` compares distributions rather than draws: our static noise has
# the official law (each digit changes with probability $0.9p$, replacements uniform over
# 0-9, the contaminated share as `doc_noise`). Two differences remain and are ours: the
# official dynamic noise draws replacements from 0-8 (numpy's `randint(0, 9)` excludes its upper
# bound) and leaves leading zeros alone, because its numbers are not zero-padded; we resample
# both digits of the padded total from 0-9 under both noises (one corruption rule for both
# kinds), so a one-digit total can also slip to two digits. A significant digit changes with
# probability $8p/9$ there against $0.9p$ here; the test bounds the gap (0.02 per digit at every
# $p$). The official line noise (deleting trace lines) is exercise 3.
#
# The shares of wrong answers {eq}`eq-tint-wrong`, on 20,000 generated documents per setting:

# %%
n = cfg.n_operands
rows = []
for kind, p in (("static", 0.3), ("dynamic", 0.1), ("dynamic", 0.3), ("static", 0.6)):
    docs = ti.dataset(20_000, kind, p, 1.0, np.random.default_rng(11), n_operands=n)
    wrong = ti.effective_rate(docs)
    theory = 1 - (1 - 0.9 * p) ** (2 if kind == "static" else 2 * n)
    rows.append({"noise": kind, "p": p, "wrong answers": wrong, "formula": theory})
    tolerance = 0.02 if kind == "static" else 0.05  # dynamic: slips that cancel are ignored
    assert abs(wrong - theory) < tolerance, (kind, p, wrong, theory)
rates = pd.DataFrame(rows)
report.show_table(rates, digits=3)
mechanism = rates.set_index(["noise", "p"])["wrong answers"]
mechanism_verdict = verdicts.check(mechanism[("dynamic", 0.3)] > mechanism[("static", 0.3)])
_ = report.glue_all(
    {
        "tint_mechanism_verdict": mechanism_verdict,
        "tint_wrong_static": mechanism[("static", 0.3)],
        "tint_wrong_dynamic": mechanism[("dynamic", 0.3)],
        "tint_wrong_dynamic_low": mechanism[("dynamic", 0.1)],
    },
    digits=3,
)

# %% [markdown]
# ## Experiment
#
# For each condition and seed we generate {glue:text}`tint_n_docs` training documents of
# {glue:text}`tint_n_operands` digits, train a character-level decoder from scratch
# ({glue:text}`tint_n_params` parameters) for {glue:text}`tint_steps` AdamW steps of
# {glue:text}`tint_batch` documents with the loss on the trace and answer only, and decode
# {glue:text}`tint_n_test` clean problems that no training document of the seed contains,
# greedily. A run counts an answer as right when the characters after `>` are the true sum.


# %%
def encode_docs(docs):
    """Token ids (B, T) of whole documents and targets with the prompt masked out."""
    ids = torch.tensor([ti.encode(d.text) for d in docs])
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, : 2 * cfg.n_operands - 1] = -100  # the prompt's characters are given, not learned
    return x.to(cfg.device), y.to(cfg.device)


def held_out_problems(train_docs, count, rng):
    """`count` distinct clean problems whose operands no training document has."""
    seen = {d.operands for d in train_docs}
    out = []
    while len(out) < count:
        ops = tuple(int(v) for v in rng.integers(0, 10, cfg.n_operands))
        if ops not in seen:
            seen.add(ops)
            out.append(ti.make_document(ops, "clean", 0.0, False, rng))
    return out


def accuracy(model, problems):
    """Greedy exact-match accuracy of the answer, and of the whole trace."""
    prompts = torch.tensor([ti.encode(d.prompt) for d in problems], device=cfg.device)
    length = len(problems[0].text) - len(problems[0].prompt)
    out = nanogpt.generate(model, prompts, length)[:, prompts.shape[1] :].tolist()
    texts = [ti.decode(row) for row in out]
    truth = [d.text[len(d.prompt) :] for d in problems]
    pairs = list(zip(texts, truth, strict=True))
    answer = [t.split(">")[-1] == s.split(">")[-1] for t, s in pairs]
    return float(np.mean(answer)), float(np.mean([t == s for t, s in pairs]))


def condition_name(kind, p, doc):
    """'clean', 'static p=0.3' or 'dynamic p=0.3 doc=0.5'."""
    if kind == "clean":
        return "clean"
    return f"{kind} p={p:g}" + ("" if doc == 1.0 else f" doc={doc:g}")


def run_one(kind, p, doc, run_seed):
    """Train on one corrupted data set; return the run's row."""
    docs = ti.dataset(cfg.n_docs, kind, p, doc, runtime.numpy_stream(run_seed, "docs"),
                      n_operands=cfg.n_operands)  # fmt: skip
    x, y = encode_docs(docs)
    shape = nanogpt.GPTConfig(
        vocab_size=len(ti.VOCAB), d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head
    )
    model = nanogpt.NanoGPT(shape, generator=runtime.stream(run_seed, "init")).to(cfg.device)
    order = runtime.stream(run_seed, "batches")

    def batches(step):
        pick = torch.randint(0, len(x), (cfg.batch_size,), generator=order).to(cfg.device)
        return x[pick], y[pick]

    warmup = min(50, cfg.steps // 5)
    losses = nanogpt.train_lm(model, batches, cfg.steps, lr=cfg.lr, warmup=warmup)
    test = held_out_problems(docs, cfg.n_test, runtime.numpy_stream(run_seed, "test"))
    acc, trace_acc = accuracy(model, test)
    return {
        "condition": condition_name(kind, p, doc), "kind": kind, "p": p, "doc": doc,
        "seed": run_seed, "wrong_share": ti.effective_rate(docs), "test_acc": acc,
        "trace_acc": trace_acc, "final_loss": float(np.mean(losses[-20:])),
        "n_params": nanogpt.count_parameters(model),
    }  # fmt: skip


# %% [markdown]
# One run cell fills one tidy table, `runs`: one row per condition and seed, with the share of
# wrong answers in its training set, the test accuracy of the answer and of the whole trace.

# %%
jobs = [(c, cfg.seed + s) for c in cfg.conditions for s in range(cfg.n_seeds)]
start = time.perf_counter()
runs = pd.DataFrame(
    [run_one(*c, s) for c, s in tqdm(jobs, desc="runs", disable=cfg.preset != "full")]
)
wall_s = time.perf_counter() - start
records.save(cfg, {"runs": runs})
print(f"{len(runs)} training runs of {runs['n_params'].iloc[0]:,} parameters each")
_ = report.glue_all(
    {
        "tint_n_docs": cfg.n_docs,
        "tint_n_operands": cfg.n_operands,
        "tint_n_params": f"{int(runs['n_params'].iloc[0]):,}",
        "tint_steps": cfg.steps,
        "tint_batch": cfg.batch_size,
        "tint_n_test": cfg.n_test,
        "tint_n_seeds": cfg.n_seeds,
    }
)

# %% tags=["nbval-ignore-output"]
print(f"experiment wall time: {wall_s:.1f} s ({wall_s / len(runs):.2f} s per run)")

# %% [markdown]
# ## Results
#
# **The rule.** Each comparison is a difference of clean test accuracy between two conditions,
# paired by seed (the same seed fixes the problems, the initialisation and the batch order), with
# a 95 % t-interval over seeds, judged by the book's rule with a smallest effect of interest of
# **0.05** (five answers in a hundred: below that a user would not prefer one kind of data over
# the other). Claim 2 compares at the same nominal $p = 0.3$; claim 3 at a matched share of
# wrong training answers (dynamic $p = 0.1$ against static $p = 0.3$). The paper predicts a
# decrease in both.

# %%
SESOI = 0.05
CLAIMS = [  # (key, claim, treatment, baseline)
    ("nominal", "2 dynamic - static, same p", "dynamic p=0.3", "static p=0.3"),
    ("matched", "3 dynamic - static, matched wrong share", "dynamic p=0.1", "static p=0.3"),
]


def judge(runs):
    """One row per claim: the paired effect over seeds on test accuracy, and its verdict."""
    rows = []
    for key, claim, treatment, baseline in CLAIMS:
        pair = runs[runs["condition"].isin([treatment, baseline])]
        effect = stats.paired_effects(pair, "test_acc", baseline, method="condition")
        row = effect.iloc[0].to_dict()
        estimate = stats.estimate_of(row)
        verdict = verdicts.judge(estimate, expected="decrease", sesoi=SESOI)
        rows.append({"key": key, "claim": claim, "treatment": treatment, "baseline": baseline,
                     "effect": estimate.text(), "n": row["n"], "verdict": verdict})  # fmt: skip
    return pd.DataFrame(rows)


effects = judge(runs)
report.show_table(effects, columns=["claim", "treatment", "baseline", "effect", "n", "verdict"])

# %% [markdown]
# The means behind them, with the share of wrong answers each training set had:

# %%
summary = pd.concat(
    [
        stats.summarise(runs, value, by=["condition"]).assign(value=value)
        for value in ("wrong_share", "test_acc", "trace_acc")
    ]
)
wide = summary.pivot(index="condition", columns="value", values="mean")
wide = wide.loc[list(dict.fromkeys(runs["condition"])), ["wrong_share", "test_acc", "trace_acc"]]
report.show_table(wide.reset_index(), digits=3)
static_cost = stats.paired_effects(
    runs[runs["condition"].isin(["static p=0.3", "clean"])], "test_acc", "clean",
    method="condition",
).iloc[0]  # fmt: skip


# %%
def plot_runs(runs):
    """Test accuracy against the share of wrong training answers, per run and condition."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, (kind, group) in enumerate(runs.groupby("kind", sort=False)):
        ax.scatter(group["wrong_share"], group["test_acc"], label=kind, **plotting.style(k))
        for name, cond in group.groupby("condition", sort=False):
            ax.annotate(name, (cond["wrong_share"].mean(), cond["test_acc"].mean()),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("share of training answers that are wrong")
    ax.set_ylabel("clean test accuracy (answer)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    return fig


report.glue_figure("fig-tint-accuracy", plot_runs(runs))

# %% [markdown]
# ```{glue:figure} fig-tint-accuracy
# :name: fig-tint-accuracy
#
# Clean test accuracy of each run against the share of wrong answers in its training set,
# coloured by the kind of noise. Under the paper's claim the static points sit above the dynamic
# ones at the same share of wrong answers.
# ```


# %%
def headline(effects, prefix):
    """Glue values for the prose: each claim's effect and verdict."""
    values = {}
    for _, row in effects.iterrows():
        values[f"{prefix}_{row['key']}"] = row["effect"]
        values[f"{prefix}_{row['key']}_verdict"] = row["verdict"]
    return values


def mean_of(condition, value="test_acc"):
    """The mean over seeds of one condition's value."""
    return wide.loc[condition, value]


book = report.glue_all(
    {
        **headline(effects, "tint"),
        "tint_acc_clean": mean_of("clean"),
        "tint_acc_static": mean_of("static p=0.3"),
        "tint_acc_dyn_low": mean_of("dynamic p=0.1"),
        "tint_acc_dyn": mean_of("dynamic p=0.3"),
        "tint_static_cost": stats.estimate_of(static_cost).text(),
    },
    digits=3,
)

# %% [markdown]
# Trained on clean traces, the model answers {glue:text}`tint_acc_clean` of the held-out
# problems. Static noise at $p = 0.3$ in every document, {glue:text}`tint_wrong_static` of the
# answers wrong, brings it to {glue:text}`tint_acc_static` (a change of
# {glue:text}`tint_static_cost` against clean traces); dynamic noise at the same $p$, which
# makes {glue:text}`tint_wrong_dynamic` of the answers wrong, to {glue:text}`tint_acc_dyn`.
# Claim 2, dynamic below static at the same $p$: {glue:text}`tint_nominal`
# (*{glue:text}`tint_nominal_verdict`*). Claim 3, at a matched share of wrong answers (dynamic
# $p = 0.1$, {glue:text}`tint_acc_dyn_low`): {glue:text}`tint_matched`
# (*{glue:text}`tint_matched_verdict`*).
#
# At this budget the model is far from what the task allows, and static noise is not
# harmless: a trace with a mistyped line is *locally inconsistent* (the next line follows from
# the clean total, not from what is written), which a small model trained on few examples
# cannot tell from arithmetic to imitate, while a dynamically corrupted trace is consistent
# line by line. What dynamic noise does, and static noise does not, is make most answers wrong.
# Whether the paper's robustness to static noise appears is a question of data and training:
# the `full` run below trains three times as many documents, ten times as many steps, on the
# harder six-digit task.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# The paper fine-tunes pretrained language models on TInt's tasks (multi-digit addition with a
# carry trace, the median of a list) and reports its results in figures, which we did not read
# off for numbers. Ours is a from-scratch character-level model on running sums of single
# digits, the `book` preset with {glue:text}`tint_n_seeds` seeds.
#
# | claim | paper {cite:p}`havrilla2024tint` | ours, `book` (CPU) | verdict, `book` | ours, `full` |
# |---|---|---|---|---|
# | 1. dynamic noise makes more answers wrong than static at the same $p$ | the mechanism (section 3) | {glue:text}`tint_wrong_dynamic` against {glue:text}`tint_wrong_static` of answers at $p = 0.3$, as {eq}`eq-tint-wrong` predicts | {glue:text}`tint_mechanism_verdict` | same check |
# | 2. dynamic noise hurts more than static at the same $p$ | accuracy stays near clean under static noise, falls under dynamic $p$ = 0.2-0.4 | dynamic - static accuracy {glue:text}`tint_nominal` | {glue:text}`tint_nominal_verdict` | {glue:text}`tint_full_nominal` *{glue:text}`tint_full_nominal_verdict`* |
# | 3. ... also at a matched share of wrong answers | implied by robustness to high static rates | dynamic $p$ = 0.1 - static $p$ = 0.3: {glue:text}`tint_matched` | {glue:text}`tint_matched_verdict` | {glue:text}`tint_full_matched` *{glue:text}`tint_full_matched_verdict`* |
#
# **Why they agree or differ.** The mechanism is arithmetic and holds at any scale. The
# comparisons depend on how much evidence the model needs: per digit, the right value is still
# the most frequent one under either noise, so a model that saw enough documents would learn
# it; a small model trained briefly learns the noisy distribution as well. The paper's models
# start from pretrained weights that already know how to add, which our from-scratch model
# does not, and its tasks hide many intermediate values per visible line, so its dynamic noise
# corrupts even more of each trace than ours.

# %% [markdown]
# (tint-full-scale)=
# ## Full-scale results
#
# The `full` preset (six-digit sums, 6,000 documents, 3,000 steps, a wider model, three seeds,
# and three more conditions: static noise at $p = 0.6$, and noise in half of the documents) is
# meant for a lent GPU or a named long CPU run (about 40 minutes on one core here); its results
# file, once committed, is judged here by the same `judge` function, and where it exists its
# verdicts are the chapter's. {glue:text}`tint_full_status`

# %%
CLAIM_KEYS = [key for key, *_ in CLAIMS]
# the full run's mean accuracies that the prose below quotes
FULL_CONDITIONS = {
    "acc_clean": "clean",
    "acc_static": "static p=0.3",
    "acc_dyn_low": "dynamic p=0.1",
    "acc_dyn": "dynamic p=0.3",
    "acc_static_high": "static p=0.6",
    "acc_static_half": "static p=0.3 doc=0.5",
    "acc_dyn_half": "dynamic p=0.3 doc=0.5",
}


def seed_range(runs, conditions):
    """'lo-hi' of single-seed test accuracy over the given conditions, for the prose."""
    acc = runs[runs["condition"].isin(conditions)]["test_acc"]
    return f"{acc.min():.2f}-{acc.max():.2f}"


full = records.committed(cfg.chapter, "full")
report.glue("tint_full_status", records.status(full, cfg.chapter, "full"))
full_values = None
if full is not None:
    full_runs = full.table("runs")
    full_effects = judge(full_runs)
    report.show_table(full_effects, columns=["claim", "treatment", "baseline", "effect", "n",
                                             "verdict"])  # fmt: skip
    full_means = stats.summarise(full_runs, "test_acc", by=["condition"])
    report.show_table(full_means, digits=3)
    full_wide = full_runs.groupby("condition")[["test_acc", "wrong_share"]].mean()
    full_values = {
        **headline(full_effects, "tint_full"),
        **{
            f"tint_full_{key}": full_wide.loc[condition, "test_acc"]
            for key, condition in FULL_CONDITIONS.items()
        },
        "tint_full_wrong_dyn_low": full_wide.loc["dynamic p=0.1", "wrong_share"],
        "tint_full_seed_range": seed_range(full_runs, ["static p=0.3", "dynamic p=0.3"]),
    }
_ = report.glue_all(
    {
        **report.full_column(
            full_values,
            [
                *CLAIM_KEYS,
                *(f"{k}_verdict" for k in CLAIM_KEYS),
                *FULL_CONDITIONS,
                "wrong_dyn_low",
                "seed_range",
            ],
            "tint_full",
        ),
        # the verdicts the chapter states: the full run's where it exists
        **report.carried(
            book,
            full_values,
            [f"{k}_verdict" for k in CLAIM_KEYS],
            book_prefix="tint",
            full_prefix="tint_full",
            to="tint_said",
        ),
    }
)

# %% [markdown]
# At full scale the model learns the task: {glue:text}`tint_full_acc_clean` of the held-out
# six-digit sums right on clean traces. Dynamic noise at $p = 0.1$, which makes
# {glue:text}`tint_full_wrong_dyn_low` of the training answers wrong, costs nothing
# ({glue:text}`tint_full_acc_dyn_low`), and with noise in only half of the documents both kinds
# stay near clean (static {glue:text}`tint_full_acc_static_half`, dynamic
# {glue:text}`tint_full_acc_dyn_half`): where the right value is still the most frequent one, a
# model that sees enough documents learns it, which is the paper's robustness. At $p = 0.3$ in
# every document both kinds cost accuracy (static {glue:text}`tint_full_acc_static`, dynamic
# {glue:text}`tint_full_acc_dyn`), static $p = 0.6$ more ({glue:text}`tint_full_acc_static_high`),
# and single seeds of the two $p = 0.3$ conditions range over {glue:text}`tint_full_seed_range`:
# whether a run escapes the noisy answers is decided by the seed more than by the kind of noise,
# so three seeds cannot order them. These values are read from the file when it exists
# (otherwise they say "not run").

# %% [markdown]
# ## Summary
#
# - Static noise corrupts a finished trace; dynamic noise corrupts the computation, so its
#   errors propagate: at $p = 0.3$ it made {glue:text}`tint_wrong_dynamic` of the answers wrong
#   against {glue:text}`tint_wrong_static` (*{glue:text}`tint_mechanism_verdict`*).
# - In the {glue:text}`tint_said_run` run, dynamic noise below static at the same $p$:
#   *{glue:text}`tint_said_nominal_verdict`*; at a matched share of wrong answers:
#   *{glue:text}`tint_said_matched_verdict`*.
# - Robustness to noise is bought with data and steps: at the `book` budget static noise at
#   $p = 0.3$ costs {glue:text}`tint_static_cost`; with more documents and steps
#   ({ref}`tint-full-scale`) low or partial noise of either kind costs little, and at
#   $p = 0.3$ in every document the seed decides more than the kind of noise.
#
# ## Exercises
#
# 1. *Why* does a resampled digit keep its value with probability 1/10, and what does that do
#    to the share of wrong answers at $p = 1$?
# 2. *Run a regime:* run the chapter with `-p steps 1500 -p n_docs 6000`
#    (`make run NB=... ARGS=...`, see {doc}`/book/running`). Does the static point move towards
#    the clean one faster than the dynamic points do?
# 3. *Change the code:* add line noise (delete each trace line with probability $p$, as TInt's
#    `line_noise`). Is it static or dynamic, and how does the model cope?
# 4. *Change the code:* score the trace as well as the answer (`trace_acc` in the table). Under
#    which noise does the model write a consistent but wrong trace?
#
# :::{dropdown} Hint for exercise 1
# Resampling draws uniformly from ten digits, one of which is the old one. At $p = 1$ each digit
# changes with probability 0.9, so a two-digit answer is right with probability 0.01 under
# static noise: the data then carries almost no information about the answer.
# :::
#
# ## Further reading
#
# - {cite:t}`havrilla2024tint`: the TInt framework, its static (character and line) and dynamic
#   noise, and results for fine-tuned and prompted models.
# - {ref}`ch-early-learning-regularization`: noisy labels in classification, where the same
#   question, which errors a model learns and which it ignores, has a training-dynamics answer.
