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
# (ch-world-we-can-check)=
# # A world we can check
#
# **Claim.** Noise-augmented fine-tuning (NoiseFiT) "significantly reduces hallucination rates"
# of large language models {cite:p}`khadangi2025noise`. This chapter tests no part of that claim
# yet: it builds the world in which Part I tests it, a world where every answer can be scored
# exactly, and measures how much the base model hallucinates before any fine-tuning.
#
# In this chapter we
# - generate fictional people with typed attributes, paraphrased biographies for the people a
#   model may know, and question-answer splits for the people it may not;
# - define the four outcomes of an answer (correct, hallucinated, abstained, malformed) and two
#   calibration measures (ECE and AUROC), and check each definition numerically;
# - pretrain a tiny Llama on the biographies (built from a config, never downloaded, cached for
#   the next chapters) and measure its baseline hallucination profile split by split;
# - set the paper's evaluation protocol next to ours.
#
# Run time: `smoke` about 13 s, `book` (the default) about 50 s of CPU time on a 2-core CPU, 10 s
# once its base model is cached; `full` about 5 minutes on one GPU.

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
seed = 0  # seeds the world and the pretraining of the base model
device = "auto"  # auto | cpu | cuda
n_seeds = None  # independent worlds and base models, seed, seed+1, ... (None: the preset's)
steps = None  # pretraining steps (None: the shared base model's)
n_known = None  # people with biographies (None: the shared base model's)

# %%
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from noisefit_lib import (
    answers,
    facts,
    facts_llama,
    facts_tokenizer,
    metrics,
    plotting,
    records,
    report,
    runtime,
    stats,
    verdicts,
)


def shared(preset_name: str, part: str, name: str):
    """A setting of the base model that Part I shares (noisefit_lib.facts_llama.BASE_PRESETS)."""
    return facts_llama.BASE_PRESETS[preset_name][part][name]


PRESETS = {
    name: {
        "n_seeds": n,
        "n_bins": bins,
        "steps": shared(name, "pretrain", "steps"),
        "n_known": shared(name, "world", "n_known"),
    }
    for name, n, bins in (("smoke", 1, 10), ("book", 1, 10), ("full", 3, 15))
}
cfg = runtime.resolve(
    "world_we_can_check",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    n_seeds=n_seeds,
    steps=steps,
    n_known=n_known,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# A hallucination is a fluent, confident answer that is false. Scoring one on real data needs
# the truth and a judge: the NoiseFiT paper samples five answers per question and has an LLM
# (Grok 3) judge them against reference answers. A judge is costly, not reproducible offline, and
# it cannot say *why* a model was wrong: did it never see the fact, or see it and fail to recall
# it?
#
# So we build a world in which the truth is known by construction. Fictional people have a birth
# city, a profession, a birth decade, an employer and so on. Each attribute has its own closed set
# of answers (cities are invented words, professions are real ones, decades look like `1950s`),
# so an answer can be only one of four things: the right value, a wrong value *of the right type*
# (a hallucination: it looks exactly like a real answer), the abstention `unknown`, or something
# malformed. We decide what the model may know: biographies of the *known* people go into its
# pretraining corpus; the *unknown* people never appear. A question about an unknown person has no
# answer the model could know, so any typed answer to it is a hallucination.
#
# The paper's setting is the interesting middle ground. A model is fine-tuned on question-answer
# pairs about some facts, then tested on *other* facts it saw only in pretraining. Whether it
# answers those correctly, wrongly or not at all measures how fine-tuning changed the way it uses
# what it knows. Later chapters fine-tune; this one measures where the base model starts.

# %% [markdown]
# ## The math
#
# ### Outcomes
#
# An item $i$ asks for attribute $a_i$ of a person. Attribute $a$ has the answer set $V_a$ (the
# sets of different attributes are disjoint); the item's truth is $g_i \in V_{a_i}$ for a known
# person and $g_i = \bot$ (none) for an unknown one. The model's parsed answer $y_i$ (the words
# before the end token `.`) gets the outcome
#
# $$
# o(y_i) = \begin{cases}
# \text{abstained} & y_i \in \mathcal{A} = \{\texttt{unknown}, \texttt{I don't know}\},\\
# \text{correct} & y_i = g_i,\\
# \text{hallucinated} & y_i \in V_{a_i} \setminus \{g_i\},\\
# \text{malformed} & \text{otherwise (empty, several words, a value of another attribute)}.
# \end{cases}
# $$ (eq-world-we-can-check-outcome)
#
# The cases are tested in this order, so every answer gets exactly one outcome; for an unknown
# person ($g_i = \bot$) every value of $V_{a_i}$ is a hallucination. On a split of $N$ items the
# rate of outcome $k$ is $r_k = \frac1N \sum_i \mathbb{1}[o(y_i) = k]$.
# **Claim 1:** the four rates of a split sum to 1.
#
# A rate from one run of $N$ items gets a Wilson 95 % interval (valid even at $r = 0$), with
# $z = 1.96$:
#
# $$
# \frac{r + \frac{z^2}{2N}}{1 + \frac{z^2}{N}} \pm \frac{z}{1 + \frac{z^2}{N}}
# \sqrt{\frac{r(1-r)}{N} + \frac{z^2}{4N^2}}.
# $$ (eq-world-we-can-check-wilson)
#
# With $S \ge 2$ seeds (independent worlds and base models) we use the $t$-interval of the mean
# rate over seeds instead, which also covers the variation between worlds.
#
# A model that knows nothing but the answer format, and picks a value of the right type at random,
# is correct with probability $1/|V_{a_i}|$. The **chance accuracy** of a split is the mean of
# $1/|V_{a_i}|$ over its items; a base model above it on facts it saw only in biographies has
# learned to *extract* them, which {cite:t}`allenzhu2023physics` show needs paraphrased and
# shuffled biographies.
#
# ### Confidence and calibration
#
# The confidence of an answer $y = (y_1, \dots, y_m)$ to prompt $x$ is its sequence probability
# under the model $p_\theta$,
#
# $$
# c = \prod_{t=1}^{m} p_\theta(y_t \mid x, y_{<t}),
# $$ (eq-world-we-can-check-confidence)
#
# over the answer tokens (here one word, so $c$ is the probability of that token). A model is
# calibrated when answers given with confidence $c$ are right a fraction $c$ of the time. The
# expected calibration error {cite:p}`guo2017calibration` measures the gap over $B$ equal-width
# bins $I_b = (\frac{b-1}{B}, \frac{b}{B}]$, with $n_b$ answers, accuracy $\mathrm{acc}_b$ and mean
# confidence $\mathrm{conf}_b$ in bin $b$:
#
# $$
# \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{N}\, \bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|.
# $$ (eq-world-we-can-check-ece)
#
# **Claim 2:** by the triangle inequality, $\mathrm{ECE} \ge |\mathrm{acc} - \overline{c}|$, the
# gap between overall accuracy and mean confidence, for any binning; and for a calibrated
# predictor ($y \sim \mathrm{Bernoulli}(c)$) the ECE tends to 0 as $N$ grows.
#
# ECE asks whether confidence has the right *level*. Whether it has the right *order*, ranking
# right answers above wrong ones so that a threshold could turn hallucinations into abstentions,
# is measured by the area under the ROC curve: with $P$ the confidences of right answers and $Q$
# those of wrong ones,
#
# $$
# \mathrm{AUROC} = \Pr_{c \sim P,\, c' \sim Q}\left[c > c'\right] + \tfrac12 \Pr\left[c = c'\right].
# $$ (eq-world-we-can-check-auroc)
#
# **Claim 3:** this pairwise probability equals the area under the ROC curve (true-positive
# against false-positive rate as the threshold sweeps), which is how `roc_auc_score` computes it.
# 0.5 is a confidence that cannot tell right from wrong; 1 separates them perfectly.

# %% [markdown]
# ## Implementation
#
# | symbol | code |
# |---|---|
# | people, attributes, $V_a$ | `world.people`, `world.attributes`, `world.values[a]` |
# | item $i$: prompt, $g_i$, $a_i$ | `facts.QAItem`: `item.prompt`, `item.gold`, `item.attribute` |
# | $o(y)$ {eq}`eq-world-we-can-check-outcome` | `world.score(answer, item)` |
# | $r_k$, Wilson interval | `facts.outcome_rates`, `stats.wilson` |
# | $c$ {eq}`eq-world-we-can-check-confidence` | `answers.generate_answers(...)[1]` |
# | ECE, AUROC | `expected_calibration_error`, `auroc_pairwise` (here); `metrics.*` (library) |
#
# The world, the tokenizer and the model are library code (`noisefit_lib.facts` and
# `noisefit_lib.facts_llama`), because all six chapters of Part I use them; this section shows what
# they produce. The calibration measures are written out here and checked against the library.
#
# ### The world
#
# A world is a pure function of its config. The people are split into groups: `qa_pretrain`
# (known, and a few question-answer texts about them are in the pretraining corpus, which is how
# the base model learns the answer format), `sft` (known; their questions are the fine-tuning set
# of later chapters), `val`, `test` (known, never fine-tuned on: the paper's setting), and two
# groups of unknown people.

# %%
world_config, model_config, pretrain_config = facts_llama.base_configs(
    cfg.preset, seed=cfg.seed, steps=cfg.steps, n_known=cfg.n_known
)
world = facts.World(world_config)
report.show_table([{"part": k, "size": v} for k, v in world.summary().items()])

# %% [markdown]
# One known person, their answer set sizes, and two of their paraphrased biographies (each
# biography draws a template per attribute and shuffles the sentence order):

# %%
person = world.group("test")[0]
print(person.name, person.values)
print({a: len(v) for a, v in world.values.items()})
for bio in world.bios[world.people.index(person) * world_config.n_bios :][:2]:
    print("-", bio)

# %% [markdown]
# The splits, one item each. `test_paraphrase` asks the `test_known` facts with question
# templates that no training text uses; `test_unknown` expects the abstention.

# %%
rows = []
for split in facts.SPLITS:
    items = world.split(split)
    rows.append(
        {
            "split": split,
            "items": len(items),
            "example prompt": items[0].prompt,
            "target": items[0].response,
        }
    )
report.show_table(rows)

# %% [markdown]
# ### Scoring
#
# `world.score` implements {eq}`eq-world-we-can-check-outcome` on the raw continuation; it first
# cuts it at the end token with `facts.parse_answer`. Five continuations of one test question:

# %%
item = world.split("test_known")[0]
wrong = next(v for v in world.values[item.attribute] if v != item.gold)
other_type = next(v for a, vals in world.values.items() if a != item.attribute for v in vals)
for text in (
    f"{item.gold} . <eos>",
    f"{wrong} . <eos>",
    "unknown . <eos>",
    f"{other_type} . <eos>",
    f"{item.gold} {item.gold} .",
):
    print(f"{item.prompt} -> {text!r:32} {world.score(text, item)}")

# %% [markdown]
# ### The noisy fine-tuning set
#
# Later chapters fine-tune on `world.sft_items(...)`: the `sft` split, optionally with a fraction
# of labels replaced by a wrong value of the same type (noisy SFT data, as in the paper's training
# file, where some answers are wrong) and abstention examples about unknown people:

# %%
noisy_sft = world.sft_items(
    label_noise=0.2,
    abstain_fraction=0.1,
    generator=runtime.numpy_stream(cfg.seed, "sft-noise-demo"),
)
flipped = [it for it in noisy_sft if it.noisy_label]
print(
    f"{len(noisy_sft)} items, {len(flipped)} with a wrong label, "
    f"{sum(it.answer == facts.ABSTAIN for it in noisy_sft)} abstentions"
)
print(f"{flipped[0].prompt} {flipped[0].response}   (truth: {flipped[0].gold})")

# %% [markdown]
# ### Tokenizer and model
#
# The tokenizer is word-level (a `tokenizers` WordLevel model with a whitespace pre-tokenizer,
# wrapped as a `transformers` fast tokenizer) over the world's vocabulary; every name, value and
# template word is one token. The model is a `LlamaForCausalLM` built from a `LlamaConfig` with
# tied embeddings:

# %%
tokenizer = facts_tokenizer.build_tokenizer(world.vocabulary())
print(len(tokenizer), "tokens;", tokenizer.tokenize(world.split("sft")[0].text))
print(model_config)
print(pretrain_config)

# %% [markdown]
# ### Calibration measures
#
# ECE {eq}`eq-world-we-can-check-ece`, bin by bin; the bin of a confidence $c$ is
# $\lceil cB \rceil$ (and 1 for $c = 0$):


# %%
def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Sum over equal-width bins of (bin share) * |bin accuracy - bin mean confidence|."""
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return float(total)


rng = runtime.numpy_stream(cfg.seed, "calibration-demo")
demo_conf = rng.uniform(size=1000)
demo_correct = rng.uniform(size=1000) < demo_conf**2  # over-confident: right w.p. c^2 < c
print(
    "ECE of an over-confident predictor:",
    f"{expected_calibration_error(demo_conf, demo_correct, 10):.4f}",
)

# %% [markdown]
# AUROC {eq}`eq-world-we-can-check-auroc` straight from its definition, comparing every right
# answer with every wrong one (quadratic, fine for a few thousand answers):


# %%
def auroc_pairwise(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie)."""
    diff = scores[positive][:, None] - scores[~positive][None, :]  # (n_pos, n_neg)
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


print(f"AUROC of the same predictor: {auroc_pairwise(demo_conf, demo_correct):.4f}")

# %% [markdown]
# The reliability diagram plots, per bin, accuracy against mean confidence:


# %%
def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict]:
    """Mean confidence, accuracy and count of each non-empty equal-width bin."""
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return [
        {
            "conf": float(conf[bins == b].mean()),
            "acc": float(correct[bins == b].mean()),
            "n": int((bins == b).sum()),
            "bin": b,
        }
        for b in range(n_bins)
        if (bins == b).any()
    ]


print(reliability_bins(demo_conf, demo_correct, 4))

# %% [markdown]
# ## Checks
#
# The world: groups are disjoint, unknown people never occur in the pretraining corpus, held-out
# question templates never occur in training text, and every value has exactly one type.

# %%
people = {s: {it.person for it in world.split(s)} for s in facts.SPLITS if s != "test_paraphrase"}
names = list(people)
assert all(not people[a] & people[b] for i, a in enumerate(names) for b in names[i + 1 :])
words = " ".join(world.pretraining_corpus()).split()
bigrams = set(itertools.pairwise(words))  # every "first last" pair in the corpus
assert all((tuple(p.name.split()) in bigrams) == p.known for p in world.people)
trained = {
    it.prompt.replace(it.person, "X") for s in ("qa_pretrain", "sft") for it in world.split(s)
}
assert not trained & {it.prompt.replace(it.person, "X") for it in world.split("test_paraphrase")}
assert all(world.attribute_of(v) == a for a, vals in world.values.items() for v in vals)
print("world checks passed")

# %% [markdown]
# Claim 1: every answer gets exactly one outcome and the rates sum to 1. We score 2,000 random
# continuations (random words of the vocabulary, the truth, wrong values, abstentions) against
# random items, and check each outcome against an independent restatement of
# {eq}`eq-world-we-can-check-outcome`:

# %%
rng = runtime.numpy_stream(cfg.seed, "scorer-check")
vocab = world.vocabulary()
test_items = world.split("test_known") + world.split("test_unknown")
outcomes = []
for _ in range(2000):
    it = test_items[rng.integers(len(test_items))]
    pool = [
        *vocab,
        facts.ABSTAIN,
        *world.values[it.attribute],
        *([it.gold] * 20 if it.gold else []),
    ]
    words = [pool[rng.integers(len(pool))] for _ in range(rng.integers(0, 3))]
    outcome = world.score(" ".join([*words, "."]), it)
    answer = " ".join(words)
    expected = (
        "abstained"
        if answer.lower() in facts.ABSTAIN_PHRASES
        else "correct"
        if it.gold is not None and answer == it.gold
        else "hallucinated"
        if answer in world.values[it.attribute]
        else "malformed"
    )
    assert outcome == expected, (answer, it)
    outcomes.append(outcome)
rates = facts.outcome_rates(outcomes)
assert abs(sum(rates.values()) - 1) < 1e-12 and all(rates[k] > 0 for k in facts.OUTCOMES)
print("claim 1 holds; outcome counts of the random answers:", facts.outcome_counts(outcomes))

# %% [markdown]
# Claim 2, and the ECE against the library's `metrics.expected_calibration_error`:

# %%
for n in (100, 1000, 10000):
    conf, right = rng.uniform(size=n), rng.uniform(size=n) < rng.uniform(size=n)
    ece = expected_calibration_error(conf, right, 10)
    assert abs(ece - metrics.expected_calibration_error(conf, right, n_bins=10)) < 1e-12
    assert ece >= abs(right.mean() - conf.mean()) - 1e-12  # claim 2, first part
calibrated_ece = []
for n in (1000, 10000, 100000):
    conf = rng.uniform(size=n)
    calibrated_ece.append(expected_calibration_error(conf, rng.uniform(size=n) < conf, 10))
assert calibrated_ece[-1] < 0.01 and calibrated_ece[-1] < calibrated_ece[0]  # claim 2, second part
print(
    "claim 2 holds; ECE of a calibrated predictor for N = 1e3, 1e4, 1e5:",
    [report.sig(e, 2) for e in calibrated_ece],
)

# %% [markdown]
# Claim 3: the pairwise AUROC equals scikit-learn's area under the ROC curve and the library's
# `metrics.auroc`, ties included (confidences rounded to 1 decimal make many ties):

# %%
for n in (50, 500):
    scores, positive = np.round(rng.uniform(size=n), 1), rng.uniform(size=n) < 0.4
    ours = auroc_pairwise(scores, positive)
    assert abs(ours - roc_auc_score(positive, scores)) < 1e-12
    assert abs(ours - metrics.auroc(scores, positive)) < 1e-12
print("claim 3 holds")

# %% [markdown]
# Generation: left-padded batched answers equal one-by-one answers, and the confidence
# {eq}`eq-world-we-can-check-confidence` of a one-word answer equals the softmax probability of
# that word after the prompt. An untrained model is enough to check the plumbing:

# %%
fresh = facts_llama.build_model(model_config, len(tokenizer), seed=cfg.seed).eval()
prompts = [it.prompt for it in world.split("test_paraphrase")[:6] + world.split("val")[:6]]
texts, conf = answers.generate_answers(fresh, tokenizer, prompts, max_new_tokens=1)
for prompt, text, c in zip(prompts, texts, conf, strict=True):
    (single,), (c_single,) = answers.generate_answers(fresh, tokenizer, [prompt], max_new_tokens=1)
    with torch.no_grad():
        probs = (
            fresh(torch.tensor(answers.prompt_ids(tokenizer, [prompt]))).logits[0, -1].softmax(-1)
        )
    assert text == single and abs(c - c_single) < 1e-5
    assert abs(c - probs.max().item()) < 1e-5
print("generation checks passed")

# %% [markdown]
# ## Experiment
#
# We pretrain the base model on the corpus (biographies of every known person, question-answer
# text about the `qa_pretrain` group) and ask it every question of every split, greedily, with
# at most 4 new tokens. The `book` world is small ({glue:text}`n_people` people, 4 attributes),
# so that pretraining fits the CPU budget; `full` has 5,000 known people, 6 attributes and a
# 34M-parameter model. With `n_seeds` above 1, seed $s$ changes both the world and the model's
# initialisation and batch order.

# %%
seeds = [cfg.seed + s for s in range(cfg.n_seeds)]
print(
    f"preset {cfg.preset}: seeds {seeds}, {world_config.n_known} known and "
    f"{world_config.n_unknown} unknown people, {world_config.n_attributes} attributes, "
    f"{pretrain_config.steps} steps of {pretrain_config.batch_size} texts"
)

# %% [markdown]
# The base model of each seed is cached under `runs/cache/`, keyed by a hash of its three configs
# and the library version: the first run pretrains it, later runs (and chapters 2-6, which
# build it with the same `facts_llama.base_model` call) load it. The printed lines say which
# happened and how long pretraining took:

# %% tags=["nbval-ignore-output", "remove-stderr"]
bases = {}
for s in seeds:
    bases[s] = facts_llama.base_model(
        cfg.preset, seed=s, device=cfg.device, steps=cfg.steps, n_known=cfg.n_known, progress=True
    )

# %%
for s, (_, base) in bases.items():
    loss = base.history["loss"]
    print(
        f"seed {s}: {facts_llama.n_parameters(base.model):,} parameters, vocabulary "
        f"{len(base.tokenizer)}, loss {report.sig(np.mean(loss[:10]))} -> "
        f"{report.sig(np.mean(loss[-10:]))} nats/token (mean of first/last 10 steps)"
    )
world, base = bases[cfg.seed]  # the shared base model of this preset

# %% [markdown]
# Every split, every seed:

# %%
SHOWN = ("qa_pretrain", "sft", "test_known", "test_paraphrase", "test_unknown")
evals = {
    s: {
        split: answers.evaluate(b.model, b.tokenizer, w, w.split(split), batch_size=1024)
        for split in SHOWN
    }
    for s, (w, b) in bases.items()
}
for split in SHOWN:
    print(f"{split:16}", evals[cfg.seed][split].counts())

# %% [markdown]
# Calibration per seed: ECE and AUROC of the confidence for telling right from wrong answers on
# `test_known` and on `test_known` and `test_unknown` pooled, and the AUROC of the confidence for
# telling a question about a known person from one about an unknown person:


# %%
def calibration(ev_known: answers.Evaluation, ev_unknown: answers.Evaluation, n_bins: int) -> dict:
    """ECE and AUROCs of one seed's test_known and test_unknown answers."""
    conf = np.concatenate([ev_known.confidence, ev_unknown.confidence])
    right = np.concatenate([ev_known.correct(), ev_unknown.correct()])
    is_known = np.arange(len(conf)) < len(ev_known.items)
    k_conf, k_right = ev_known.confidence, ev_known.correct()
    return {
        "ece_known": expected_calibration_error(k_conf, k_right, n_bins),
        "auroc_known": auroc_pairwise(k_conf, k_right)
        if 0 < k_right.sum() < len(k_right)
        else np.nan,
        "ece_pooled": expected_calibration_error(conf, right, n_bins),
        "auroc_pooled": auroc_pairwise(conf, right),
        "auroc_known_vs_unknown": auroc_pairwise(conf, is_known),
        "conf_known": float(k_conf.mean()),
        "conf_unknown": float(ev_unknown.confidence.mean()),
    }


calib = {s: calibration(e["test_known"], e["test_unknown"], cfg.n_bins) for s, e in evals.items()}
print({k: report.sig(v) for k, v in calib[cfg.seed].items()})

# %% [markdown]
# One more measurement: where do the hallucinations come from? Names are built from a pool of
# first and last names, so many people share one of their two name words with someone else. We
# count how often a hallucinated value is the true value of a *known namesake* (another known
# person with the same first or last name), against the rate at which a random wrong value of the
# right type would be:


# %%
def namesake_rate(w: facts.World, ev: answers.Evaluation) -> tuple[float, float]:
    """Share of hallucinations equal to a known namesake's value, and that share by chance."""
    by_word: dict[str, list[facts.Person]] = {}  # name word -> known people with that word
    for p in w.people:
        for word in p.name.split() if p.known else ():
            by_word.setdefault(word, []).append(p)
    hits, chance, n = 0, 0.0, 0
    for it, answer, outcome in zip(ev.items, ev.answers, ev.outcomes, strict=True):
        if outcome != "hallucinated":
            continue
        values = {
            p.values[it.attribute]
            for word in it.person.split()
            for p in by_word.get(word, [])
            if p.name != it.person
        } - {it.gold}
        n, hits = n + 1, hits + (answer in values)
        chance += len(values) / (len(w.values[it.attribute]) - (it.gold is not None))
    return hits / max(n, 1), chance / max(n, 1)


namesake = {
    s: {split: namesake_rate(w, evals[s][split]) for split in ("test_known", "test_unknown")}
    for s, (w, _) in bases.items()
}
for split in ("test_known", "test_unknown"):
    shares = np.array([namesake[s][split] for s in seeds])  # (seeds, 2)
    print(
        f"{split:13} hallucinations equal to a known namesake's value: {shares[:, 0].mean():.3f} "
        f"(chance {shares[:, 1].mean():.3f})"
    )

# %% [markdown]
# The measurements go into tidy tables, one row per (seed, split, outcome), per (seed, measure)
# and per (seed, split), and with them to a results file under `runs/` (git-ignored):

# %% tags=["nbval-ignore-output"]
outcome_runs = pd.DataFrame(
    [
        {
            "seed": s,
            "split": split,
            "outcome": k,
            "answers": n_k,
            "items": len(w.split(split)),
            "chance": float(np.mean([1 / len(w.values[it.attribute]) for it in w.split(split)])),
        }
        for s, (w, _) in bases.items()
        for split in SHOWN
        for k, n_k in evals[s][split].counts().items()
    ]
)
calibration_runs = pd.DataFrame(
    [
        {"seed": s, "measure": key, "value": value}
        for s, c in calib.items()
        for key, value in c.items()
    ]
)
namesake_runs = pd.DataFrame(
    [
        {"seed": s, "split": split, "share": share, "chance": chance}
        for s, by_split in namesake.items()
        for split, (share, chance) in by_split.items()
    ]
)
per_seed = [
    {
        "seed": s,
        "n_parameters": facts_llama.n_parameters(b.model),
        "base_key": b.key,
        "pretrain_seconds": b.history["seconds"],
        "final_loss": float(np.mean(b.history["loss"][-10:])),
        "loss": b.history["loss"][:: max(1, len(b.history["loss"]) // 200)],
    }
    for s, (_, b) in bases.items()
]
records.save(
    cfg,
    {
        "seeds": seeds,
        "per_seed": per_seed,
        "outcomes": outcome_runs,
        "calibration": calibration_runs,
        "namesake": namesake_runs,
    },
)

# %% [markdown]
# ## Results
#
# The outcome rates of each split with 95 % intervals. With one seed (the `book` preset) they are
# Wilson intervals {eq}`eq-world-we-can-check-wilson` over the items of one run: they describe
# this one base model on this test set, not the variation between training runs. With several
# seeds (`full`) they are $t$-intervals over seeds, which also cover that variation:


# %%
def profile_table(outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, outcome): mean rate, its 95 % interval and the split's chance level."""
    rates = outcomes.assign(rate=outcomes["answers"] / outcomes["items"])
    if rates["seed"].nunique() > 1:  # t-interval over seeds
        table = stats.summarise(rates, "rate", by=["split", "outcome"])
        table["low"], table["high"] = table["low"].clip(lower=0), table["high"].clip(upper=1)
    else:  # Wilson interval over the items of one run
        table = pd.DataFrame(
            [
                {
                    "split": r["split"],
                    "outcome": r["outcome"],
                    **stats.wilson(int(r["answers"]), int(r["items"])).as_dict(),
                }
                for _, r in rates.iterrows()
            ]
        )
    by_split = rates.groupby("split", sort=False)
    return table.assign(
        chance=table["split"].map(by_split["chance"].mean()),
        items=table["split"].map(by_split["items"].first()),
    )


def show_profile(table: pd.DataFrame) -> None:
    """The profile as a table: each rate with its 95 % interval in brackets."""
    text = table.assign(
        rate=[f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" for _, r in table.iterrows()]
    )
    wide = text.pivot(index="split", columns="outcome", values="rate").loc[list(SHOWN)]
    splits = table.drop_duplicates("split").set_index("split").loc[list(SHOWN)]
    wide = wide[list(facts.OUTCOMES)].assign(chance=splits["chance"].map("{:.3f}".format))
    report.show_table(
        wide.assign(items=splits["items"]).rename_axis("split").reset_index(),
        columns=["split", "items", *facts.OUTCOMES, "chance"],
    )


profile = profile_table(outcome_runs)
show_profile(profile)

# %%
fig, (ax_loss, ax_out) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
losses = np.array([b.history["loss"] for _, b in bases.values()])
ax_loss.plot(np.arange(1, losses.shape[1] + 1), losses.mean(0), color=plotting.style(0)["color"])
ax_loss.set(xlabel="pretraining step", ylabel="loss (nats/token)", ylim=(0, None))
x = np.arange(len(SHOWN))
for i, k in enumerate(facts.OUTCOMES):
    st = plotting.style(i + 1)
    rate = profile[profile["outcome"] == k].set_index("split").loc[list(SHOWN)]
    ax_out.bar(
        x + (i - 1.5) * 0.2,
        rate["mean"],
        0.2,
        yerr=np.clip([rate["mean"] - rate["low"], rate["high"] - rate["mean"]], 0, None),
        color=st["color"],
        label=k,
        capsize=2,
        hatch=["", "//", "..", "xx"][i],
        edgecolor="white",
    )
chance = profile.drop_duplicates("split").set_index("split").loc[list(SHOWN), "chance"]
ax_out.scatter(x - 0.3, chance, marker="_", s=200, color="black", label="chance (correct)")
ax_out.set_xticks(x, [s.replace("_", "\n") for s in SHOWN])
ax_out.set(ylabel="fraction of answers", ylim=(0, 1.3), yticks=np.linspace(0, 1, 6))
ax_out.legend(ncols=5, fontsize=8, loc="upper center")
report.glue_figure("fig-world-we-can-check-profile", fig)

# %% [markdown]
# ```{glue:figure} fig-world-we-can-check-profile
# :name: fig-world-we-can-check-profile
#
# Left: pretraining loss of the base model (nats per token; mean over seeds, each step). Right:
# outcome of every answer of the base model, by split, with 95 % intervals (Wilson over items for
# one seed, t over seeds otherwise). The dotted ticks mark the chance accuracy of a model that
# answers a random value of the right type.
# ```

# %%
rate = profile.set_index(["split", "outcome"])
known = rate.loc[("test_known", "correct")]
shares = namesake_runs.groupby("split")[["share", "chance"]].mean()
report.glue_all(
    {
        "n_people": world_config.n_known + world_config.n_unknown,
        "acc_qa_pretrain": report.sig(rate.loc[("qa_pretrain", "correct"), "mean"], 3),
        "acc_sft": report.sig(rate.loc[("sft", "correct"), "mean"], 3),
        "acc_test_known": report.sig(known["mean"], 3),
        "acc_test_known_lo": report.sig(known["low"], 3),
        "acc_test_known_hi": report.sig(known["high"], 3),
        "hall_test_known": report.sig(rate.loc[("test_known", "hallucinated"), "mean"], 3),
        "chance_test_known": report.sig(known["chance"], 3),
        "malformed_paraphrase": report.sig(rate.loc[("test_paraphrase", "malformed"), "mean"], 3),
        "acc_paraphrase": report.sig(rate.loc[("test_paraphrase", "correct"), "mean"], 3),
        "hall_test_unknown": report.sig(rate.loc[("test_unknown", "hallucinated"), "mean"], 3),
        "abst_test_unknown": report.sig(rate.loc[("test_unknown", "abstained"), "mean"], 3),
        "extracts": "above" if known["low"] > known["chance"] else "not above",
        "namesake_unknown": report.sig(shares.loc["test_unknown", "share"], 3),
        "namesake_unknown_chance": report.sig(shares.loc["test_unknown", "chance"], 3),
        "namesake_known": report.sig(shares.loc["test_known", "share"], 3),
        "abstains": "never abstained"
        if (outcome_runs.loc[outcome_runs["outcome"] == "abstained", "answers"] == 0).all()
        else "sometimes abstained",
    }
)


# %% [markdown]
# The base model ({numref}`fig-world-we-can-check-profile`) answers the question-answer texts it
# was pretrained on correctly at a rate of {glue:text}`acc_qa_pretrain`. The test is the facts it
# saw only in biographies: on `test_known` it is right at a rate of {glue:text}`acc_test_known`
# (95 % interval over the test items of this one base model, {glue:text}`acc_test_known_lo` to
# {glue:text}`acc_test_known_hi`),
# {glue:text}`extracts` the chance level of {glue:text}`chance_test_known`. Above chance means
# the model has learned to extract knowledge from biographies into the answer format. Its wrong
# answers are hallucinations ({glue:text}`hall_test_known`), not malformed text: the right format
# and the right type, with a wrong value. On `sft`, the people whose questions later chapters
# fine-tune on, it is right at {glue:text}`acc_sft`, so fine-tuning will mix facts the model can
# already recall with facts it saw but cannot recall. {cite:t}`gekhman2024finetuning` found that
# fine-tuning examples a model does not already know are learned slowly and, once learned, make
# it hallucinate more.
#
# Two splits show what the base model cannot do. Asked with held-out wordings
# (`test_paraphrase`), it is right at a rate of only {glue:text}`acc_paraphrase` and gives no
# valid answer at a rate of {glue:text}`malformed_paraphrase`: it has learned the question
# template more than the question. Asked about people it has never seen (`test_unknown`), it
# {glue:text}`abstains` and hallucinated at a rate of {glue:text}`hall_test_unknown`: nothing in
# pretraining taught it that `unknown` is an answer.
#
# The namesake count of the experiment says what the hallucinations are. A share of
# {glue:text}`namesake_unknown` of the hallucinations about unknown people (chance
# {glue:text}`namesake_unknown_chance`) and {glue:text}`namesake_known` of those about known people
# are a namesake's fact: the model has keyed part of what it knows to single name words, and
# answers a stranger with what it knows about someone of the same name. These are the
# hallucinations the rest of Part I tries to prevent.

# %% [markdown]
# Calibration ({numref}`fig-world-we-can-check-calibration`): is the confidence of a
# hallucination lower than that of a right answer?

# %%
ev_k, ev_u = evals[cfg.seed]["test_known"], evals[cfg.seed]["test_unknown"]
fig, (ax_rel, ax_hist) = plt.subplots(1, 2, figsize=(11, 3.8))
ax_rel.plot([0, 1], [0, 1], color="grey", linewidth=1, label="calibrated")
for i, (label, conf, right) in enumerate(
    (
        ("test_known", ev_k.confidence, ev_k.correct()),
        (
            "test_known + test_unknown",
            np.concatenate([ev_k.confidence, ev_u.confidence]),
            np.concatenate([ev_k.correct(), ev_u.correct()]),
        ),
    )
):
    bins = pd.DataFrame(reliability_bins(conf, right, cfg.n_bins))
    st = plotting.style(i + 1)
    ax_rel.plot(
        bins["conf"], bins["acc"], color=st["color"], linestyle=st["linestyle"], label=label
    )
    ax_rel.scatter(
        bins["conf"],
        bins["acc"],
        s=4 + bins["n"],
        color=st["color"],
        marker=st["marker"],
        alpha=0.6,
    )
ax_rel.set(
    xlabel="confidence (probability of the answer)",
    ylabel="accuracy",
    xlim=(0, 1),
    ylim=(-0.02, 1.04),
)
ax_rel.legend(fontsize=8, loc="upper left")
edges = np.linspace(0, 1, 21)
groups = (
    ("right (test_known)", ev_k.confidence[ev_k.correct()]),
    ("hallucinated (test_known)", ev_k.confidence[np.array(ev_k.outcomes) == "hallucinated"]),
    ("hallucinated (test_unknown)", ev_u.confidence[np.array(ev_u.outcomes) == "hallucinated"]),
)
for i, (label, values) in enumerate(groups):
    ax_hist.hist(
        values,
        bins=edges,
        histtype="step",
        linewidth=2,
        density=True,
        label=label,
        color=plotting.style(i)["color"],
        linestyle=plotting.style(i)["linestyle"],
    )
ax_hist.set(xlabel="confidence (probability of the answer)", ylabel="density (per unit confidence)")
ax_hist.set_ylim(0, ax_hist.get_ylim()[1] * 1.35)
ax_hist.legend(fontsize=8, ncols=2, loc="upper center")
report.glue_figure("fig-world-we-can-check-calibration", fig)

# %% [markdown]
# ```{glue:figure} fig-world-we-can-check-calibration
# :name: fig-world-we-can-check-calibration
#
# Left: reliability diagram of the base model's answers (the first seed), accuracy against mean
# confidence per equal-width bin; marker area is proportional to the number of answers. Right:
# confidence of right answers and of hallucinations about known and unknown people.
# ```
#
# Each calibration number, as a mean over seeds with its 95 % $t$-interval over seeds (none with
# a single seed):

# %%
CALIBRATION = {
    "ece_known": "ECE, test_known",
    "ece_pooled": "ECE, test_known + test_unknown",
    "auroc_known": "AUROC right vs wrong, test_known",
    "auroc_pooled": "AUROC right vs wrong, pooled",
    "auroc_known_vs_unknown": "AUROC known vs unknown person",
    "conf_known": "mean confidence, test_known",
    "conf_unknown": "mean confidence, test_unknown",
}


def calibration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per calibration measure: mean over seeds and its 95 % interval over seeds."""
    table = stats.summarise(runs.dropna(subset=["value"]), "value", by=["measure"])
    table["95 % (seeds)"] = [
        "-" if r["n"] < 2 else f"[{r['low']:.3g}, {r['high']:.3g}]" for _, r in table.iterrows()
    ]
    return table.set_index("measure").reindex(list(CALIBRATION))


calibration_summary = calibration_table(calibration_runs)
report.show_table(
    calibration_summary.rename(index=CALIBRATION).rename_axis("measure").reset_index(),
    columns=["measure", "mean", "95 % (seeds)"],
    digits=3,
)
c = calibration_summary["mean"]


def auroc_words(value: float) -> str:
    """A plain-words reading of an AUROC (0.5: no better than a coin)."""
    return (
        "no better than chance"
        if value < 0.55
        else "a little better than chance"
        if value < 0.65
        else "clearly better than chance"
        if value < 0.85
        else "well"
    )


report.glue_all(
    {
        **{
            key: report.sig(c[key], 3)
            for key in (
                "ece_known",
                "ece_pooled",
                "auroc_known",
                "auroc_known_vs_unknown",
                "conf_known",
                "conf_unknown",
            )
        },
        "auroc_known_words": auroc_words(c["auroc_known"]),
        "auroc_kvu_words": auroc_words(c["auroc_known_vs_unknown"]),
    }
)


# %% [markdown]
# On `test_known` the confidence separates right from wrong answers {glue:text}`auroc_known_words`
# (AUROC {glue:text}`auroc_known`), and its level is off by an ECE of {glue:text}`ece_known`. The
# number that matters most for hallucination is the last AUROC: the confidence separates questions
# about known people from questions about people the model has never seen
# {glue:text}`auroc_kvu_words` (AUROC {glue:text}`auroc_known_vs_unknown`; mean confidence
# {glue:text}`conf_known` against {glue:text}`conf_unknown`). Pooling both splits, the ECE is
# {glue:text}`ece_pooled`. A threshold on this confidence therefore cannot turn the base model's
# hallucinations into abstentions; that is the behaviour a method against hallucination has to
# change. The namesake analysis above suggests why: an answer about a stranger is often a
# namesake's fact, recalled with the confidence that fact has for the namesake.

# %% [markdown]
# ## What the paper reports vs what we measured
#
# This chapter reproduces no result of the paper; it sets up the measurement, so every verdict is
# `not tested`, with the reason. The table puts the paper's evaluation protocol (as far as we
# could check it, from its code and project page; the paper's own result tables could not be read
# offline) next to ours.

# %%
full = records.committed(cfg.chapter, "full")
report.glue_all(
    {
        "verdict_setup": verdicts.not_tested("this chapter fine-tunes nothing; see chapters 2-6"),
        "verdict_protocol": verdicts.not_tested("a protocol difference, described here"),
        "verdict_base_models": verdicts.not_tested("tiny models, not the paper's five families"),
    }
)

# %% [markdown]
# | aspect | paper {cite:p}`khadangi2025noise` | ours, `book` | ours, `full` | verdict |
# |---|---|---|---|---|
# | fine-tuning data | 832 real QA pairs, some answers wrong (official repository's training file) | `sft` split (clean; `label_noise` injects wrong labels) | same, 5,000-person world | {glue:text}`verdict_setup` |
# | test set | 208 held-out QA about other facts (project page) | `test_known`: facts seen only in pretraining | same | {glue:text}`verdict_protocol` |
# | base models | five families, among them Llama 3B and Qwen 0.5B (project page) | tiny Llama from a config, pretrained here | 34M-parameter Llama | {glue:text}`verdict_base_models` |
# | answers | 5 samples per question, T = 0.5, top-p 0.9, top-k 40, repetition penalty 1.2, up to 50 new tokens (official `Inference.py`) | 1 greedy answer, up to 4 new tokens | same | {glue:text}`verdict_protocol` |
# | scoring | an LLM judge (Grok 3) against reference answers (project page) | exact match against closed typed answer sets | same | {glue:text}`verdict_protocol` |
# | hallucination | an answer judged incorrect | a wrong value of the right type; abstained and malformed counted apart | same | {glue:text}`verdict_protocol` |
# | base model's accuracy | reported per family in the paper (not read here) | {glue:text}`acc_test_known` on `test_known` | {glue:text}`full_acc_test_known` | {glue:text}`verdict_setup` |
# | NoiseFiT lowers hallucination | +7.7 pp mean accuracy of the best NoiseFiT configuration over the base model (project page) | base hallucination rate {glue:text}`hall_test_known` (NoiseFiT: later chapters) | {glue:text}`full_hall_test_known` | {glue:text}`verdict_setup` |
#
# **What we can mirror offline:** the split between facts the model saw in pretraining and facts
# it is fine-tuned on, noisy fine-tuning labels, a base-vs-fine-tuned comparison, and (better than
# the paper) exact scoring that separates hallucination from abstention and malformed output.
# **What we cannot:** real pretrained models and their real-world knowledge, sampling five answers
# scored by an LLM judge, and the general-ability benchmarks (TruthfulQA, HaluEval, the HELM-style
# suite). Our tiny world also makes the task narrower: one-word answers in a fixed template.

# %% [markdown]
# (world-we-can-check-full-scale)=
# ## Full-scale results
#
# The `full` preset pretrains three 34M-parameter base models on three 5,000-person worlds with 6
# attributes, on a lent GPU machine with `tools/gpu_run.sh` (see {doc}`/book/running`); the model
# of seed 0 is the one chapters 2-6 fine-tune under `full`. This section never recomputes it:
# where a results file is committed, it is read with the same functions as the book run; the
# line below says whether one is. {glue:text}`full_status`

# %%
full_values = dict.fromkeys(("full_acc_test_known", "full_hall_test_known"), "no run committed")
if full is not None:
    print(
        f"seeds {full.results['seeds']}, pretraining "
        f"{[round(r['pretrain_seconds']) for r in full.results['per_seed']]} s"
    )
    full_profile = profile_table(full.table("outcomes"))
    show_profile(full_profile)
    report.show_table(
        calibration_table(full.table("calibration")).reset_index(),
        columns=["measure", "mean", "95 % (seeds)"],
        digits=3,
    )
    full_rate = full_profile.set_index(["split", "outcome"])
    full_known = stats.estimate_of(full_rate.loc[("test_known", "correct")])
    full_values = {
        "full_acc_test_known": full_known.text(3),
        "full_hall_test_known": report.sig(
            full_rate.loc[("test_known", "hallucinated"), "mean"], 3
        ),
    }
report.glue_all({"full_status": records.status(full, cfg.chapter, "full"), **full_values})


# %% [markdown]
# ## Summary
#
# - The world scores every answer exactly: correct, hallucinated (a wrong value of the right
#   type), abstained or malformed, with the truth known by construction.
# - The base model recalls facts it saw only in biographies ({glue:text}`acc_test_known` on
#   `test_known`, chance {glue:text}`chance_test_known`) and hallucinates most of the rest.
# - It never learned to abstain: about unknown people it hallucinates, often a namesake's fact,
#   and its confidence tells them from known ones {glue:text}`auroc_kvu_words` (AUROC
#   {glue:text}`auroc_known_vs_unknown`).
# - Chapters 2-6 start from this cached base model and this scorer.
#
# ## Exercises
#
# 1. *Why* are answers to `test_paraphrase` mostly malformed rather than hallucinated? What would
#    have to be in the pretraining corpus for them to be answered?
# 2. *Change the code:* add `qa_repeats=0` to the world config (no question-answer text in
#    pretraining) through `facts_llama.base_configs(..., qa_repeats=0)` and re-run the profile. What
#    happens to every split, and why is that not the base model the paper starts from?
# 3. *Change the code:* add abstention examples about unknown people to the pretraining corpus.
#    Does the base model abstain on `test_unknown`, and does it start abstaining on known people?
# 4. *Run a regime:* `make run NB=notebooks/part1_noisefit/01_a_world_we_can_check.ipynb
#    PRESET=book ARGS="-p steps 600"`: how do `test_known` accuracy and the AUROCs move with
#    twice the pretraining?
#
# :::{dropdown} Hint for exercise 1
# The base model has seen each question template only with the `qa_pretrain` people; the held-out
# templates' words appear only inside biography sentences, so after `A:` the model continues as in
# a biography. {cite:t}`allenzhu2023physics` make the same point about instruction data mixed into
# pretraining.
# :::
#
# ## Further reading
#
# - {cite:t}`khadangi2025noise`: NoiseFiT, the method Part I implements and tests.
# - {cite:t}`allenzhu2023physics`: synthetic biographies, and when knowledge stored in pretraining
#   can be extracted by questions.
# - {cite:t}`gekhman2024finetuning`: fine-tuning on facts a model does not know increases
#   hallucination.
# - {cite:t}`guo2017calibration`: calibration of neural networks, ECE and reliability diagrams.
