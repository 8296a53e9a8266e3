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
# (ch-soft-thinking)=
# # Soft thinking
#
# **Claim.** Feeding a language model the probability-weighted mixture of token embeddings (a
# *soft token*) instead of one sampled token does not make it explore several reasoning paths at
# once: the model mostly follows the mixture's top component, so vanilla soft thinking behaves
# like greedy decoding; randomising the mixture with Dirichlet resampling or the Gumbel-softmax
# trick restores diversity and the gains of sampling {cite:p}`wu2025singlethreaded`.
#
# In this chapter we
# - define soft tokens, the probe of how much the next step depends on the top component, and
#   the two randomised variants;
# - train a small causal language model (a Llama built from a config, about 240 thousand
#   parameters) on a path-finding task with several valid paths per problem, checked exactly;
# - compare greedy decoding, sampling, vanilla soft thinking and its Dirichlet and Gumbel-softmax
#   variants (with a sweep of their randomness) by pass@1, pass@k and the number of distinct
#   valid paths.
#
# Run time: `smoke` about 10 s, `book` (the default) about 35 s of CPU time on a 2-core CPU, `full`
# about two minutes on one GPU.

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
seed = 0  # seeds the graph, the model and the decoders' randomness
device = "auto"  # auto | cpu | cuda
train_steps = None  # optimiser steps of the language model (None: the preset's)
n_samples = None  # samples per problem, the n of pass@k (None: the preset's)
n_models = None  # independently trained models (seeds seed .. seed + n_models - 1)

# %%
import math
import os
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers imports tqdm.auto, whose notebook bar warns (with a path) without ipywidgets
warnings.filterwarnings("ignore", message="IProgress not found")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from noisefit_lib import metrics, plotting, records, report, runtime, stats, verdicts

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

PRESETS = {
    "smoke": {
        "train_steps": 30,
        "n_samples": 4,
        "n_models": 1,
        "n_problems": 16,
        "width": 8,
        "hidden": 64,
        "top_k": 5,
        "dirichlet_alphas": [1.0, 10.0],
        "gumbel_taus": [0.5, 1.0],
    },
    "book": {
        "train_steps": 150,
        "n_samples": 16,
        "n_models": 1,
        "n_problems": 64,
        "width": 12,
        "hidden": 96,
        "top_k": 5,
        "dirichlet_alphas": [1.0, 10.0, 100.0],
        "gumbel_taus": [0.1, 0.5, 2.0],
    },
    "full": {
        "train_steps": 1000,
        "n_samples": 64,
        "n_models": 5,
        "n_problems": 144,
        "width": 12,
        "hidden": 96,
        "top_k": 5,
        "dirichlet_alphas": [0.3, 1.0, 10.0, 100.0],
        "gumbel_taus": [0.1, 0.5, 1.0, 2.0],
    },
}
cfg = runtime.resolve(
    "soft_thinking",
    PRESETS,
    preset,
    seed=seed,
    device=device,
    train_steps=train_steps,
    n_samples=n_samples,
    n_models=n_models,
)
plotting.use_house_style()
print(cfg.summary())

# %% [markdown]
# ## The idea
#
# A language model that reasons step by step commits to one token per step. If two next steps
# are equally good, sampling picks one and forgets the other. *Soft thinking* keeps both: instead
# of the embedding of one token, the next input is the average of the embeddings of the likely
# tokens, weighted by their probabilities. The hope is that the model then carries several
# reasoning paths forward in superposition, "thinking" in a continuous concept space.
#
# {cite:t}`wu2025singlethreaded` probe what models actually do with such inputs. They compare the
# next-step distribution after a soft token with the distributions after only its top token and
# after only its second token: the first pair is much closer. The model reads a soft token as its
# top component, so the loop "soft input, take its top component, produce the next soft input"
# is greedy decoding in disguise, and it loses the diversity that sampling provides. Their fix is
# to make the mixture random: resample its weights from a Dirichlet distribution, or perturb them
# with Gumbel noise (the Gumbel-softmax trick). The latter is the best of their variants.
#
# We test this on a task small enough to train here, but with the property that matters: every
# problem has several valid solutions, and a solution can be checked exactly.

# %% [markdown]
# ## The math
#
# ### Soft tokens
#
# Let $z \in \mathbb{R}^V$ be the model's next-token logits and $E \in \mathbb{R}^{V \times D}$ its
# input embedding matrix, with rows $e_i$. With temperature $T$, keep the $k$ most probable tokens
# $\mathcal{K}$ and renormalise:
#
# $$
# \tilde p_i = \frac{\operatorname{softmax}(z/T)_i}{\sum_{j \in \mathcal{K}}
#   \operatorname{softmax}(z/T)_j}\ (i \in \mathcal{K}), \qquad
# s = \sum_{i \in \mathcal{K}} w_i\, e_i .
# $$ (eq-soft-thinking-soft-token)
#
# Vanilla soft thinking uses $w = \tilde p$ and feeds $s$ as the next input embedding; the token
# it shows (and that we check) is $\arg\max_i w_i$. Discrete decoding is the special case of a
# one-hot $w$: greedy decoding takes $\arg\max \tilde p$, sampling draws $i \sim \tilde p$.
#
# ### The probe
#
# Write $P(\cdot \mid s)$ for the model's next-token distribution when the last input is $s$ (the
# earlier inputs unchanged), and $i_1, i_2$ for the top two tokens of $w$. With the Jensen-Shannon
# divergence $\mathrm{JS}(P \Vert Q) = \tfrac12 \mathrm{KL}(P \Vert M) + \tfrac12
# \mathrm{KL}(Q \Vert M)$, $M = \tfrac12 (P + Q)$, the probe compares
#
# $$
# \mathrm{JS}_1 = \mathrm{JS}\big(P(\cdot \mid s) \,\Vert\, P(\cdot \mid e_{i_1})\big)
# \quad\text{and}\quad
# \mathrm{JS}_2 = \mathrm{JS}\big(P(\cdot \mid s) \,\Vert\, P(\cdot \mid e_{i_2})\big).
# $$ (eq-soft-thinking-probe)
#
# **Claim 1 (the paper's, "single-threaded"):** $\mathrm{JS}_1 \ll \mathrm{JS}_2$: the model's
# next step after a soft token is almost the one after its top token alone.
#
# **Claim 2 (the paper's):** so vanilla soft thinking emits (nearly) the greedy path: it is as
# accurate as greedy decoding (its pass@1 is no lower), and has no more diversity (pass@$k$ =
# pass@1, which holds by construction for a deterministic decoder).
#
# ### Randomised soft tokens
#
# *Dirichlet resampling* draws the weights around $\tilde p$, with a concentration $\alpha$
# (large $\alpha$: close to $\tilde p$; small: close to one-hot at a random token):
#
# $$
# w \sim \operatorname{Dirichlet}(\alpha \tilde p), \quad\text{i.e.}\quad
# w_i = \frac{\gamma_i}{\sum_j \gamma_j},\ \gamma_i \sim \operatorname{Gamma}(\alpha \tilde p_i, 1).
# $$ (eq-soft-thinking-dirichlet)
#
# *Gumbel-softmax* perturbs the log-probabilities with independent Gumbel noise and softens with a
# temperature $\tau$:
#
# $$
# w_i = \frac{\exp\big((\log \tilde p_i + g_i)/\tau\big)}{\sum_{j \in \mathcal{K}}
#   \exp\big((\log \tilde p_j + g_j)/\tau\big)}, \qquad g_i = -\log(-\log u_i),\ u_i \sim U(0, 1).
# $$ (eq-soft-thinking-gumbel)
#
# **Claim 3 (Gumbel-max):** whatever $\tau$, the shown token $\arg\max_i w_i =
# \arg\max_i (\log \tilde p_i + g_i)$ is an exact sample from $\tilde p$. So Gumbel soft thinking
# shows the tokens of ordinary sampling, while the input it feeds is a mixture whose sharpness
# $\tau$ sets; as $\tau \to 0$ it *is* sampling.
#
# **Claim 4 (the paper's):** randomised soft thinking, Gumbel-softmax in particular, restores
# diversity: higher pass@$k$ than vanilla soft thinking, at a pass@1 no worse.
#
# ### pass@k
#
# With $n$ samples per problem of which $c$ are correct, the unbiased estimator of the probability
# that at least one of $k$ samples is correct is {cite:p}`chen2021codex`
#
# $$
# \text{pass@}k = 1 - \binom{n-c}{k} \Big/ \binom{n}{k},
# $$ (eq-soft-thinking-pass-at-k)
#
# averaged over problems (`noisefit_lib.metrics.pass_at_k`).

# %% [markdown]
# ## Implementation
#
# | symbol | code |
# |---|---|
# | $z$, $E$, $s$ | `logits`, `embed` (the model's input embedding matrix), `soft` |
# | $\tilde p$ on $\mathcal{K}$ | `probs`, `idx` (top-$k$ values and token ids) |
# | $w$ | `weights` |
# | $T$, $k$, $\alpha$, $\tau$ | `temperature`, `cfg.top_k`, `alpha`, `tau` |
#
# ### The weights of a soft token
#
# {eq}`eq-soft-thinking-soft-token`: the top-$k$ renormalised distribution, and the soft
# embedding for given weights.


# %%
def top_k_probs(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """p~ on the top-k tokens: (probs, idx), both (B, k), probs renormalised, descending."""
    probs, idx = torch.softmax(logits / temperature, dim=-1).topk(k, dim=-1)
    return probs / probs.sum(-1, keepdim=True), idx


def soft_embedding(weights: torch.Tensor, idx: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """s = sum_i w_i e_i: weights and idx (B, k), embed (V, D) -> (B, D)."""
    return torch.einsum("bk,bkd->bd", weights, embed[idx])


demo_probs, demo_idx = top_k_probs(torch.tensor([[2.0, 1.9, 0.0, -3.0]]), k=3)
print(demo_probs, demo_idx)
print(soft_embedding(demo_probs, demo_idx, torch.eye(4)))

# %% [markdown]
# With the identity as embedding matrix, the soft embedding is the weight vector itself.
#
# ### Randomised weights
#
# {eq}`eq-soft-thinking-dirichlet` through Gamma draws, and {eq}`eq-soft-thinking-gumbel`. Both
# take an explicit generator, so every decoder's randomness is its own stream:


# %%
def dirichlet_weights(probs: torch.Tensor, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """w ~ Dirichlet(alpha p~), via normalised Gamma(alpha p~_i, 1) draws; (B, k)."""
    conc = (alpha * probs).clamp_min(1e-6).cpu().double()
    gamma = torch._standard_gamma(conc, generator=gen) if conc.numel() else conc
    w = gamma / gamma.sum(-1, keepdim=True).clamp_min(1e-300)
    w = torch.where(
        torch.isfinite(w).all(-1, keepdim=True) & (w.sum(-1, keepdim=True) > 0),
        w,
        torch.nn.functional.one_hot(conc.argmax(-1), conc.shape[-1]).double(),
    )
    return w.to(probs.dtype).to(probs.device)


def gumbel_weights(probs: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """w = softmax((log p~ + g) / tau), g ~ Gumbel(0, 1); (B, k)."""
    u = torch.rand(probs.shape, generator=gen).clamp(1e-10, 1 - 1e-10).to(probs.device)
    g = -torch.log(-torch.log(u))
    return torch.softmax((torch.log(probs.clamp_min(1e-30)) + g) / tau, dim=-1)


gen = runtime.stream(cfg.seed, "demo")
print(dirichlet_weights(demo_probs, 1.0, gen), gumbel_weights(demo_probs, 0.5, gen), sep="\n")

# %% [markdown]
# ### The probe
#
# {eq}`eq-soft-thinking-probe`, with the divergence in nats:


# %%
def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between rows of two probability matrices (B, V)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(
            a > 0, a * (torch.log(a.clamp_min(1e-30)) - torch.log(m.clamp_min(1e-30))), 0.0
        ).sum(-1)

    return 0.5 * kl(p) + 0.5 * kl(q)


print(
    js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])), "= ln 2 =", math.log(2)
)

# %% [markdown]
# ## Checks
#
# Claim 3 (Gumbel-max): the shown token of Gumbel soft thinking is a sample from $\tilde p$, for
# every $\tau$. Over 20,000 draws its frequencies match $\tilde p$ within Monte Carlo error, and the
# argmax does not depend on $\tau$ for the same noise:

# %%
p_check = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(20_000, 1)
freq = {}
for tau in (0.1, 1.0, 5.0):
    g_tau = runtime.stream(cfg.seed, "gumbel-check")  # the same noise for every tau
    freq[tau] = torch.bincount(gumbel_weights(p_check, tau, g_tau).argmax(-1), minlength=4) / 20_000
    torch.testing.assert_close(freq[tau], p_check[0], atol=0.015, rtol=0)
assert torch.equal(freq[0.1], freq[5.0])
gumbel_max_holds = torch.equal(freq[0.1], freq[5.0]) and all(
    torch.allclose(f, p_check[0], atol=0.015, rtol=0) for f in freq.values()
)
print(
    "Gumbel argmax frequencies:",
    [round(f, 3) for f in freq[1.0].tolist()],
    "vs p~ = [0.5, 0.3, 0.15, 0.05]",
)

# %% [markdown]
# The Dirichlet weights average to $\tilde p$ (the mean of $\operatorname{Dirichlet}(\alpha \tilde
# p)$), and their spread shrinks as $\alpha$ grows, as the variance
# $\tilde p_i (1 - \tilde p_i)/(\alpha + 1)$ says:

# %%
g_dir = runtime.stream(cfg.seed, "dirichlet-check")
for alpha in (1.0, 10.0, 100.0):
    w = dirichlet_weights(p_check, alpha, g_dir)
    torch.testing.assert_close(w.mean(0), p_check[0], atol=0.01, rtol=0)
    expected_var = p_check[0] * (1 - p_check[0]) / (alpha + 1)
    torch.testing.assert_close(w.var(0), expected_var, atol=0.003, rtol=0.1)
print("Dirichlet mean and variance match for alpha = 1, 10, 100")

# %% [markdown]
# The Jensen-Shannon divergence is symmetric, zero for equal inputs and at most $\ln 2$; the
# unbiased pass@k equals direct enumeration (more tests are in `tests/test_metrics.py`):

# %%
g_js = runtime.stream(cfg.seed, "js-check")
p, q = (
    torch.softmax(torch.randn(50, 7, generator=g_js), -1),
    torch.softmax(torch.randn(50, 7, generator=g_js), -1),
)
torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
assert js_divergence(p, p).abs().max() < 1e-7 and (js_divergence(p, q) <= math.log(2) + 1e-6).all()
assert math.isclose(metrics.pass_at_k(4, 1, 2), 1 - math.comb(3, 2) / math.comb(4, 2))
print("JS and pass@k checks pass")

# %% [markdown]
# ## Experiment
#
# ### The task: paths through a layered graph
#
# A fixed random directed graph has 6 layers of `width` nodes; every node has edges to 3 random
# nodes of the next layer. A problem names a start node $a$ in layer 0 and a goal $b$ in layer 5;
# a solution is any path $a \to x_1 \to \dots \to x_4 \to b$ along edges. We keep only pairs with
# at least two solutions. The model sees `<bos> a b :` and writes the five nodes after it; the
# four intermediate nodes are its "thinking", and an answer is correct when every hop is an edge
# and it ends at $b$: an exact check. Training paths are drawn by a goal-directed walk, which at
# every step picks uniformly among the successors from which $b$ is still reachable, so the data
# contain every solution.

# %%
N_LAYERS, OUT_DEGREE = 6, 3


def make_graph(width: int, gen: torch.Generator) -> torch.Tensor:
    """Adjacency (N_LAYERS - 1, width, width): each node has OUT_DEGREE next-layer successors."""
    adj = torch.zeros(N_LAYERS - 1, width, width, dtype=torch.bool)
    for layer in range(N_LAYERS - 1):
        for node in range(width):
            adj[layer, node, torch.randperm(width, generator=gen)[:OUT_DEGREE]] = True
    return adj


def reach_counts(adj: torch.Tensor) -> torch.Tensor:
    """paths[l, i, b]: number of paths from node i of layer l to node b of the last layer."""
    width = adj.shape[1]
    paths = torch.zeros(N_LAYERS, width, width, dtype=torch.long)
    paths[-1] = torch.eye(width, dtype=torch.long)
    for layer in range(N_LAYERS - 2, -1, -1):
        paths[layer] = adj[layer].long() @ paths[layer + 1]
    return paths


# %% [markdown]
# A word-level vocabulary: the node $i$ of layer $l$ is the word `l{l}n{i}` (its own token per
# layer, so a path's position is in its tokens), plus `<bos>` and `:`.


# %%
def vocabulary(width: int) -> list[str]:
    """Token strings: <bos>, ':', then l{layer}n{node} for every node."""
    return ["<bos>", ":"] + [f"l{layer}n{i}" for layer in range(N_LAYERS) for i in range(width)]


def node_id(layer: int | torch.Tensor, node: int | torch.Tensor, width: int) -> int | torch.Tensor:
    """Token id of node `node` in layer `layer`."""
    return 2 + layer * width + node


def sample_paths(
    a: torch.Tensor, b: torch.Tensor, paths: torch.Tensor, adj: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Goal-directed walks a -> b, uniform over successors that can still reach b; (B, 6)."""
    nodes = [a]
    for layer in range(N_LAYERS - 1):
        ok = adj[layer, nodes[-1]] & (paths[layer + 1][:, b].T > 0)  # (B, width)
        nodes.append(torch.multinomial(ok.float(), 1, generator=gen).squeeze(1))
    return torch.stack(nodes, dim=1)


# %% [markdown]
# Encoding problems and paths as token ids, and checking an answer exactly:


# %%
def encode(
    a: torch.Tensor, b: torch.Tensor, width: int, path: torch.Tensor | None = None
) -> torch.Tensor:
    """<bos> a b : [x1 .. x5] as token ids, (B, 4) or (B, 9) with a path of nodes (B, 6)."""
    prompt = [
        torch.zeros_like(a),
        node_id(0, a, width),
        node_id(N_LAYERS - 1, b, width),
        torch.ones_like(a),
    ]
    tokens = (
        prompt
        if path is None
        else prompt + [node_id(j, path[:, j], width) for j in range(1, N_LAYERS)]
    )
    return torch.stack(tokens, dim=1)


def is_valid(
    a: torch.Tensor, b: torch.Tensor, answer: torch.Tensor, adj: torch.Tensor, width: int
) -> torch.Tensor:
    """Whether each answer (B, 5) of token ids is a path a -> b along edges."""
    ok = torch.ones_like(a, dtype=torch.bool)
    prev = a
    for layer in range(1, N_LAYERS):
        node = answer[:, layer - 1] - node_id(layer, 0, width)
        in_layer = (node >= 0) & (node < width)
        node = node.clamp(0, width - 1)
        ok &= in_layer & adj[layer - 1, prev, node]
        prev = node
    return ok & (prev == b)


# %% [markdown]
# The problems and a look at one, with all its solutions:

# %%
width = cfg.width
adj = make_graph(width, runtime.stream(cfg.seed, "graph"))
paths = reach_counts(adj)
pairs = [(a, b) for a in range(width) for b in range(width) if paths[0, a, b] >= 2]
chosen = torch.randperm(len(pairs), generator=runtime.stream(cfg.seed, "problems"))[
    : cfg.n_problems
]
prob_a = torch.tensor([pairs[i][0] for i in chosen])
prob_b = torch.tensor([pairs[i][1] for i in chosen])
n_solutions = paths[0, prob_a, prob_b]
words = vocabulary(width)
print(
    f"{len(words)} tokens; {len(pairs)} of {width * width} pairs have >= 2 paths; "
    f"{len(prob_a)} problems, solutions per problem: median {n_solutions.median().item()}, "
    f"max {n_solutions.max().item()}"
)
example = sample_paths(
    prob_a[:1].repeat(200), prob_b[:1].repeat(200), paths, adj, runtime.stream(cfg.seed, "example")
)
for path in sorted({tuple(p.tolist()) for p in example}):
    print(
        " ".join(words[t] for t in encode(prob_a[:1], prob_b[:1], width, torch.tensor([path]))[0])
    )

# %% [markdown]
# ### The model
#
# A Llama decoder built from a config (no download): two layers, hidden size `hidden`, four heads,
# untied input and output embeddings. It is trained on freshly sampled goal-directed paths for the
# chosen problems, with the loss on the five answer tokens only.


# %%
def make_model(vocab_size: int, hidden: int) -> LlamaForCausalLM:
    """A small Llama causal LM built from a config."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=16,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).to(cfg.device)


def train(
    model: LlamaForCausalLM, gen: torch.Generator, steps: int, batch: int = 256
) -> list[float]:
    """AdamW with cosine decay on goal-directed paths; returns the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(prob_a), (batch,), generator=gen)
        path = sample_paths(prob_a[pick], prob_b[pick], paths, adj, gen)
        tokens = encode(prob_a[pick], prob_b[pick], width, path).to(cfg.device)
        logits = model(input_ids=tokens[:, :-1]).logits[:, 3:]  # predictions of the 5 answer tokens
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 4:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


# %% [markdown]
# ### Decoding with soft tokens
#
# One decoder covers all methods. At each of the five answer steps it computes $\tilde p$ from the
# logits of the last position, turns it into weights $w$ by the method's rule, shows the token
# $\arg\max w$, and appends either that token's embedding (discrete methods) or the soft embedding
# {eq}`eq-soft-thinking-soft-token` (soft methods) to the input embeddings. The last answer token
# is only shown. The whole prefix is re-run at each step (nine positions at most: no cache
# needed).


# %%
def weights_for(
    method: str, probs: torch.Tensor, knob: float, gen: torch.Generator
) -> torch.Tensor:
    """w from p~ for each method; discrete methods return one-hot weights."""
    if method == "greedy":
        return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    if method == "sampling":
        pick = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(probs.device)
        return torch.nn.functional.one_hot(pick, probs.shape[-1]).to(probs.dtype)
    if method == "soft":
        return probs
    if method == "soft+dirichlet":
        return dirichlet_weights(probs, knob, gen)
    if method == "soft+gumbel":
        return gumbel_weights(probs, knob, gen)
    raise ValueError(f"unknown method {method!r}")


# %%
@torch.no_grad()
def decode(
    model: LlamaForCausalLM,
    a: torch.Tensor,
    b: torch.Tensor,
    method: str,
    knob: float,
    gen: torch.Generator,
    probe: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Shown answer tokens (B, 5) and, if probe, JS_1, JS_2 and the top-2 weight per soft step."""
    embed = model.get_input_embeddings().weight  # (V, D)
    inputs = embed[encode(a, b, width).to(cfg.device)]  # (B, 4, D)
    shown, probe_rows = [], {"js1": [], "js2": [], "w2": []}
    for step in range(N_LAYERS - 1):
        probs, idx = top_k_probs(model(inputs_embeds=inputs).logits[:, -1], cfg.top_k)
        weights = weights_for(method, probs, knob, gen)
        order = weights.argsort(-1, descending=True)
        shown.append(idx.gather(1, order[:, :1]).squeeze(1))  # the token of the largest weight
        soft = soft_embedding(weights, idx, embed)[:, None]  # (B, 1, D)
        if probe and step < N_LAYERS - 2:
            top1, top2 = (
                embed[idx.gather(1, order[:, j : j + 1]).squeeze(1)][:, None] for j in (0, 1)
            )
            p_soft, p_1, p_2 = (
                torch.softmax(model(inputs_embeds=torch.cat([inputs, s], 1)).logits[:, -1], -1)
                for s in (soft, top1, top2)
            )
            probe_rows["js1"].append(js_divergence(p_soft, p_1))
            probe_rows["js2"].append(js_divergence(p_soft, p_2))
            probe_rows["w2"].append(weights.gather(1, order[:, 1:2]).squeeze(1))
        inputs = torch.cat([inputs, soft], dim=1)
    return torch.stack(shown, 1).cpu(), {
        k: torch.stack(v, 1).cpu() for k, v in probe_rows.items() if v
    }


# %% [markdown]
# ### Settings
#
# Every decoder runs `n_samples` times on every problem (greedy and vanilla soft once: they are
# deterministic). Discrete sampling and the soft methods all start from the same $\tilde p$
# (temperature 1, top-$k$), so they differ only in what they feed back. The knobs swept are the
# Dirichlet concentration $\alpha$ and the Gumbel temperature $\tau$.

# %%
DECODERS = (
    [("greedy", 0.0), ("sampling", 0.0), ("soft", 0.0)]
    + [("soft+dirichlet", a) for a in cfg.dirichlet_alphas]
    + [("soft+gumbel", t) for t in cfg.gumbel_taus]
)
KS = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= cfg.n_samples]
print(
    f"Llama: 2 layers, hidden {cfg.hidden}; {cfg.train_steps} steps of 256 paths; "
    f"{cfg.n_models} model(s); top-k {cfg.top_k}"
)
print(f"{len(prob_a)} problems x {cfg.n_samples} samples; pass@k for k in {KS}")
print("decoders:", ", ".join(f"{m}" + (f"({v})" if v else "") for m, v in DECODERS))

# %% [markdown]
# One model: train it, then run every decoder on every problem, keeping per problem the number of
# correct answers, the distinct valid answers and, for vanilla soft thinking, the probe.


# %%
def run_model(model_seed: int) -> dict:
    """Train one model and evaluate every decoder; returns per-problem counts and probe values."""
    torch.manual_seed(model_seed)
    model = make_model(len(words), cfg.hidden)
    losses = train(model, runtime.stream(model_seed, "train"), cfg.train_steps)
    model.eval()
    out = {
        "final_loss": float(np.mean(losses[-20:])),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    greedy, _ = decode(model, prob_a, prob_b, "greedy", 0.0, runtime.stream(model_seed, "greedy"))
    soft, probe = decode(
        model, prob_a, prob_b, "soft", 0.0, runtime.stream(model_seed, "soft"), probe=True
    )
    out["probe"] = {k: v.flatten().tolist() for k, v in probe.items()}
    out["soft_equals_greedy"] = float((soft == greedy).all(1).float().mean())
    for method, knob in DECODERS:
        reps = 1 if method in ("greedy", "soft") else cfg.n_samples
        a, b = prob_a.repeat_interleave(reps), prob_b.repeat_interleave(reps)
        answers, _ = decode(
            model, a, b, method, knob, runtime.stream(model_seed, f"{method}-{knob}")
        )
        valid = is_valid(a, b, answers, adj, width).view(-1, reps)
        distinct = [
            len({tuple(x) for x, v in zip(ans.tolist(), ok.tolist(), strict=True) if v})
            for ans, ok in zip(answers.view(-1, reps, 5), valid, strict=True)
        ]
        out[f"{method}({knob})"] = {
            "n_correct": (valid.sum(1) * (cfg.n_samples // reps)).tolist(),
            "distinct": distinct,
        }
    return out


# %% tags=["nbval-ignore-output", "remove-stderr"]
from tqdm import tqdm

model_runs = [run_model(s) for s in tqdm(range(cfg.seed, cfg.seed + cfg.n_models), desc="models")]

# %% [markdown]
# Greedy and vanilla soft thinking are deterministic: their one answer per problem counts as
# $n$ identical samples, so their pass@$k$ equals their pass@1. The training loss, and the
# results file:

# %%
for s, run in enumerate(model_runs, start=cfg.seed):
    print(
        f"model seed {s}: {run['n_params']} parameters, "
        f"final training loss {report.sig(run['final_loss'])} nats"
    )
records.save(
    cfg,
    {
        "runs": model_runs,
        "decoders": [list(d) for d in DECODERS],
        "n_solutions": n_solutions.tolist(),
    },
)

# %% [markdown]
# ## Results
#
# The evaluation problems are the training problems: the model is trained on paths of exactly
# these start-goal pairs, so the task measures what the decoders make of a model that knows every
# problem, not generalisation. The unit of replication is the trained model (its seed); the
# `book` run trains one, so its effects have no interval, and the `full` run (five models), where
# it is committed, carries the verdicts.
#
# ### The probe
#
# Over every soft step of vanilla soft thinking (except the last, which feeds nothing), the
# divergence of the next-step distribution from the one after the top token alone, and from the
# one after the second token alone. We split the steps by how mixed the soft token was: its second
# weight $w_{i_2}$. These numbers pool the soft steps of the trained model(s) and describe them;
# the verdict below uses one value per model.

# %%
MIXED = 0.2  # a soft step is "mixed" when its second weight is at least this
js1, js2, w2 = (
    np.concatenate([r["probe"][key] for r in model_runs]) for key in ("js1", "js2", "w2")
)
probe_rows = [
    {
        "steps": label,
        "n": int(mask.sum()),
        "mean JS_1 (nats)": float(js1[mask].mean()),
        "mean JS_2 (nats)": float(js2[mask].mean()),
        "fraction JS_1 < JS_2": float((js1[mask] < js2[mask]).mean()),
    }
    for label, mask in (
        ("all soft steps", np.ones_like(w2, dtype=bool)),
        (f"w_i2 >= {MIXED}", w2 >= MIXED),
        ("w_i2 >= 0.35", w2 >= 0.35),
    )
    if mask.any()
]
report.show_table(probe_rows)

# %% [markdown]
# ### Accuracy and diversity
#
# Two tidy tables hold everything the verdicts use: one row per (decoder, model) with pass@$k$
# and the number of distinct valid paths, each the mean over problems, and one row per model with
# its probe values. The same functions read the committed `full` run below.


# %%
def decoder_runs(runs: list[dict], decoders: list, n_samples: int, first_seed: int) -> pd.DataFrame:
    """One row per (decoder, model seed): pass@k for k <= n_samples and distinct valid paths."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples]
    rows = []
    for model_seed, run in enumerate(runs, start=first_seed):
        for method, knob in decoders:
            per_problem = run[f"{method}({knob})"]
            row = {
                "decoder": method + (f" {knob:g}" if knob else ""),
                "method": method,
                "knob": knob,
                "seed": model_seed,
            }
            for k in ks:
                row[f"pass@{k}"] = float(
                    np.mean(
                        [metrics.pass_at_k(n_samples, int(c), k) for c in per_problem["n_correct"]]
                    )
                )
            row["distinct valid paths"] = float(np.mean(per_problem["distinct"]))
            rows.append(row)
    return pd.DataFrame(rows)


def probe_runs(runs: list[dict], first_seed: int) -> pd.DataFrame:
    """One row per model: mean JS_1 and JS_2 over its mixed soft steps, and soft = greedy."""
    rows = []
    for model_seed, run in enumerate(runs, start=first_seed):
        j1, j2, mixed = (
            np.asarray(run["probe"]["js1"]),
            np.asarray(run["probe"]["js2"]),
            np.asarray(run["probe"]["w2"]) >= MIXED,
        )
        rows.append(
            {
                "seed": model_seed,
                "mixed steps": int(mixed.sum()),
                "JS_1": j1[mixed].mean() if mixed.any() else math.nan,
                "JS_2": j2[mixed].mean() if mixed.any() else math.nan,
                "soft = greedy": run["soft_equals_greedy"],
            }
        )
    return pd.DataFrame(rows)


def summary_of(per_model: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % interval over models of every metric, per decoder (long format)."""
    metric_columns = [c for c in per_model if c.startswith("pass@") or c.startswith("distinct")]
    long = per_model.melt(id_vars=["decoder", "seed"], value_vars=metric_columns, var_name="metric")
    return stats.summarise(long, "value", by=["decoder", "metric"])


def means_of(per_model: pd.DataFrame) -> pd.DataFrame:
    """Mean over models per decoder (rows, in run order) and metric (columns, k ascending)."""
    wide = summary_of(per_model).pivot(index="decoder", columns="metric", values="mean")
    ks = sorted((c for c in wide if c.startswith("pass@")), key=lambda c: int(c[5:]))
    return wide.loc[per_model["decoder"].unique(), [*ks, "distinct valid paths"]]


per_model = decoder_runs(model_runs, DECODERS, cfg.n_samples, cfg.seed)
probe = probe_runs(model_runs, cfg.seed)
summary, means = summary_of(per_model), means_of(per_model)
report.show_table(means.reset_index())

# %%
fig, (ax_k, ax_knob) = plt.subplots(1, 2, figsize=(10, 3.6))
shown_k = [
    "greedy",
    "sampling",
    "soft",
    f"soft+dirichlet {cfg.dirichlet_alphas[1]:g}",
    f"soft+gumbel {cfg.gumbel_taus[1]:g}",
]
for i, name in enumerate(shown_k):
    rows = summary[(summary["decoder"] == name) & summary["metric"].str.startswith("pass@")]
    ax_k.plot(KS, rows["mean"], label=name, **plotting.style(i))
    ax_k.fill_between(
        KS,
        rows["low"].fillna(rows["mean"]),
        rows["high"].fillna(rows["mean"]),
        color=plotting.style(i)["color"],
        alpha=0.15,
    )
ax_k.set_xscale("log", base=2)
ax_k.set_xlabel("k (samples)")
ax_k.set_ylabel("pass@k")
ax_k.legend(fontsize=8)
kmax = KS[-1]
for i, (method, knobs) in enumerate(
    (("soft+dirichlet", cfg.dirichlet_alphas), ("soft+gumbel", cfg.gumbel_taus)), start=3
):
    for at_k, ls in ((1, "-"), (kmax, "--")):
        ax_knob.plot(
            knobs,
            [means.loc[f"{method} {v:g}", f"pass@{at_k}"] for v in knobs],
            color=plotting.style(i)["color"],
            marker=plotting.style(i)["marker"],
            linestyle=ls,
            label=f"{method}, pass@{at_k}",
        )
for i, name in enumerate(("greedy", "sampling", "soft")):
    for at_k, ls in ((1, "-"), (kmax, "--")):
        ax_knob.axhline(
            means.loc[name, f"pass@{at_k}"],
            color=plotting.style(i)["color"],
            linestyle=ls,
            linewidth=1,
            label=f"{name} (line)" if at_k == 1 else None,
        )
ax_knob.set_xscale("log")
ax_knob.set_xlabel("Dirichlet alpha or Gumbel tau (dimensionless)")
ax_knob.set_ylabel(f"pass@1 (solid), pass@{kmax} (dashed)")
ax_knob.legend(fontsize=7)
report.glue_figure("fig-soft-thinking-passk", fig)

# %% [markdown]
# ```{glue:figure} fig-soft-thinking-passk
# :name: fig-soft-thinking-passk
#
# Left: pass@k against k for each decoder (mean over problems and models; bands: 95 % t-intervals
# over models, absent with one model). Right: pass@1 and pass@n against the randomness knob of
# Dirichlet resampling (concentration alpha) and Gumbel-softmax (temperature tau); the horizontal
# lines are greedy decoding, discrete sampling and vanilla soft thinking. Path finding in a
# layered graph; the `book` preset trains one model.
# ```
#
# ### The verdicts
#
# Every claim with a sign is judged with the book's rule (`noisefit_lib.verdicts.judge`) on an
# effect paired by model seed. The smallest effects of interest: 0.05 nats for the probe (7 % of
# the largest possible divergence $\ln 2$; "$\mathrm{JS}_1 \ll \mathrm{JS}_2$" means more than
# that), and 0.02 for pass@$k$ (two points of accuracy, more than one problem in the 64 of the
# `book` run: a smaller change would pass unnoticed). Claims 2 and 4 (pass@1) say that one
# decoder is *no worse* than another, so their expected sign is "increase" and a
# `no detectable effect` agrees with them. A claim that one decoder *beats* another is
# `not tested (ceiling)` when either of the two is within 0.02 of a perfect score: there is no
# room above it for an effect of interest, and a gap to it only measures how far the other decoder
# falls short. Here that is the case for the best Gumbel variant's pass@{glue:text}`kmax`
# ({glue:text}`gumbel_pk`), and for discrete sampling's pass@1 in the `full` run
# ({glue:text}`full_sampling_p1`). The best Gumbel variant is
# the temperature with the highest pass@1 (pass@{glue:text}`kmax` ties at 1); choosing it on the
# same problems favours it, which only matters where it wins. The function below is applied to
# the `book` tables here and to the `full` tables in {ref}`soft-thinking-full-scale`.

# %%
SESOI_JS, SESOI_PASS = 0.05, 0.02


def best_of(per_model: pd.DataFrame, method: str) -> str:
    """The decoder of ``method`` (one knob value) with the highest mean pass@1 over models."""
    pass1 = stats.summarise(per_model[per_model["method"] == method], "pass@1", by=["decoder"])
    return pass1.loc[pass1["mean"].idxmax(), "decoder"]


def claim_table(per_model: pd.DataFrame, probe: pd.DataFrame) -> pd.DataFrame:
    """Effect (paired by model seed) and verdict of every claim with a sign, for one run."""
    kmax = max(int(c.removeprefix("pass@")) for c in per_model if c.startswith("pass@"))
    mean = {
        value: stats.summarise(per_model, value, by=["decoder"]).set_index("decoder")["mean"]
        for value in ("pass@1", f"pass@{kmax}")
    }
    gumbel = best_of(per_model, "soft+gumbel")

    def compare(claim: str, value: str, treatment: str, baseline: str, beats: bool) -> dict:
        pair = per_model[per_model["decoder"].isin([treatment, baseline])]
        effect = stats.estimate_of(
            stats.paired_effects(pair, value, baseline, method="decoder").iloc[0]
        )
        ceiling = beats and max(mean[value][[treatment, baseline]]) >= 1 - SESOI_PASS
        verdict = (
            verdicts.not_tested("ceiling")
            if ceiling
            else verdicts.judge(effect, expected="increase", sesoi=SESOI_PASS)
        )
        return {
            "claim": claim,
            "effect": f"{value}: {treatment} - {baseline}",
            **effect.as_dict(),
            "verdict": verdict,
        }

    measured = probe.dropna(subset=["JS_1", "JS_2"])
    js_effect = stats.paired_difference(measured["JS_1"], measured["JS_2"])
    return pd.DataFrame(
        [
            {
                "claim": "probe",
                "effect": "JS_1 - JS_2 (nats), mixed steps",
                **js_effect.as_dict(),
                "verdict": verdicts.judge(js_effect, expected="decrease", sesoi=SESOI_JS),
            },
            compare("greedy", "pass@1", "soft", "greedy", beats=False),
            compare("random_pk", f"pass@{kmax}", gumbel, "soft", beats=True),
            compare("random_p1", "pass@1", gumbel, "soft", beats=False),
            compare("vs_sampling", "pass@1", gumbel, "sampling", beats=True),
        ]
    )


claims = claim_table(per_model, probe)
report.show_table(claims, digits=3)

# %%
full = records.committed(cfg.chapter, "full")
if full is None:
    full_claims = claims.assign(verdict=verdicts.not_tested("no full run committed"))
else:
    full_per_model = decoder_runs(
        full.results["runs"],
        full.results["decoders"],
        full.config["n_samples"],
        full.config["seed"],
    )
    full_claims = claim_table(full_per_model, probe_runs(full.results["runs"], full.config["seed"]))
    full_means = means_of(full_per_model)
final = full_claims if full is not None else claims  # the full run takes over where it exists
book_by, full_by = claims.set_index("claim"), full_claims.set_index("claim")
gumbel_name, best_dirichlet = (
    best_of(per_model, "soft+gumbel"),
    best_of(per_model, "soft+dirichlet"),
)
_ = report.glue_all(
    {
        **{f"effect_{c}": stats.estimate_of(row) for c, row in book_by.iterrows()},
        **{
            f"full_effect_{c}": (stats.estimate_of(row) if full is not None else "—")
            for c, row in full_by.iterrows()
        },
        **{f"book_verdict_{c}": v for c, v in book_by["verdict"].items()},
        **{f"full_verdict_{c}": v for c, v in full_by["verdict"].items()},
        **{f"verdict_{c}": v for c, v in final.set_index("claim")["verdict"].items()},
        "verdict_gumbel_max": verdicts.check(gumbel_max_holds),
        "js1_mixed": float(js1[w2 >= MIXED].mean()),
        "js2_mixed": float(js2[w2 >= MIXED].mean()),
        "n_mixed": int((w2 >= MIXED).sum()),
        "frac_js1_smaller": float((js1[w2 >= MIXED] < js2[w2 >= MIXED]).mean()),
        "soft_eq_greedy": float(probe["soft = greedy"].mean()),
        "kmax": kmax,
        "n_problems": len(prob_a),
        "median_solutions": int(n_solutions.median()),
        "greedy_p1": means.loc["greedy", "pass@1"],
        "sampling_p1": means.loc["sampling", "pass@1"],
        "sampling_pk": means.loc["sampling", f"pass@{kmax}"],
        "soft_p1": means.loc["soft", "pass@1"],
        "gumbel_name": gumbel_name,
        "gumbel_p1": means.loc[gumbel_name, "pass@1"],
        "gumbel_pk": means.loc[gumbel_name, f"pass@{kmax}"],
        "gumbel_distinct": means.loc[gumbel_name, "distinct valid paths"],
        "dirichlet_name": best_dirichlet,
        "dirichlet_p1": means.loc[best_dirichlet, "pass@1"],
        "dirichlet_pk": means.loc[best_dirichlet, f"pass@{kmax}"],
        "sampling_distinct": means.loc["sampling", "distinct valid paths"],
        "full_sampling_p1": "—" if full is None else full_means.loc["sampling", "pass@1"],
    }
)

# %% [markdown]
# **The probe.** On the {glue:text}`n_mixed` soft steps whose second weight was at least 0.2, the
# next-step distribution after the soft token was at Jensen-Shannon divergence
# {glue:text}`js1_mixed` nats from the one after its top token alone, and {glue:text}`js2_mixed`
# from the one after its second token alone; the top token was closer on
# {glue:text}`frac_js1_smaller` of these steps. Vanilla soft thinking emitted exactly the greedy
# path on {glue:text}`soft_eq_greedy` of the problems.
#
# **Accuracy and diversity.** The problems have a median of {glue:text}`median_solutions` valid
# paths. Greedy decoding solved {glue:text}`greedy_p1` of them and vanilla soft thinking
# {glue:text}`soft_p1`, each with a single path per problem. Discrete sampling had pass@1
# {glue:text}`sampling_p1` and pass@{glue:text}`kmax` {glue:text}`sampling_pk`, finding
# {glue:text}`sampling_distinct` distinct valid paths per problem on average. The best Gumbel
# variant ({glue:text}`gumbel_name`) reached pass@{glue:text}`kmax` {glue:text}`gumbel_pk` at
# pass@1 {glue:text}`gumbel_p1`, with {glue:text}`gumbel_distinct` distinct valid paths; the best
# Dirichlet variant ({glue:text}`dirichlet_name`) reached {glue:text}`dirichlet_pk` at pass@1
# {glue:text}`dirichlet_p1`. Against discrete sampling, the best Gumbel variant's pass@1 differed
# by {glue:text}`effect_vs_sampling` (one model: no interval; the `full` run's five models:
# {glue:text}`full_effect_vs_sampling`). In the `full` run that is a small, clear deficit, but
# sampling solves {glue:text}`full_sampling_p1` of the problems with one sample, so no decoder
# could beat it by an effect of interest: the claim that Gumbel soft thinking *beats* sampling is
# not tested, and the deficit is the price of feeding mixtures the model was not trained on.
#
# Greedy decoding and every randomised decoder are at or next to the ceiling: greedy solves every
# problem, and {glue:text}`kmax` samples of any randomised decoder find a valid path for (nearly)
# every problem, because the model was trained on exactly these problems. pass@$k$ therefore
# cannot show the diversity gains the paper is about; the gap between a randomised decoder and
# vanilla soft thinking at pass@{glue:text}`kmax` is vanilla soft thinking's shortfall at pass@1,
# not a gain of diversity. That shortfall is the clearest result: vanilla soft thinking solves far
# fewer problems than greedy decoding, so it is not greedy decoding in disguise: it is worse. The
# model reads a mixture more like its top token than its second (the probe), but not like the top
# token *alone*, and a mixture of two node embeddings is an input it never saw in training: the
# next step drifts off the valid paths. Every randomised variant helps, and the closer its weights
# are to one-hot (small $\alpha$, small $\tau$) the better, because a one-hot weight vector is a
# plain token. At the one-hot end, Gumbel soft thinking *is* sampling (Claim 3), and that is where
# it does best ({numref}`fig-soft-thinking-passk`, right).

# %% [markdown]
# ## What the paper reports vs what we measured
#
# Effects are paired by model seed (mean and 95 % interval; the `book` run has one model and so no
# interval). The last column is the chapter's verdict: the `full` run's where it is committed.
#
# | claim | paper {cite:p}`wu2025singlethreaded` | ours, `book` (one model, {glue:text}`n_problems` problems) | verdict, `book` | ours, `full` | verdict, `full` | verdict |
# |---|---|---|---|---|---|---|
# | next step follows the soft token's top component ($\mathrm{JS}_1 \ll \mathrm{JS}_2$) | probes on 32B reasoning models; numbers not verified here | $\mathrm{JS}_1 - \mathrm{JS}_2$ = {glue:text}`effect_probe` nats on mixed steps | {glue:text}`book_verdict_probe` | {glue:text}`full_effect_probe` | {glue:text}`full_verdict_probe` | {glue:text}`verdict_probe` |
# | vanilla soft thinking ≈ greedy decoding (its pass@1 no lower) | stated in the abstract | pass@1 soft − greedy {glue:text}`effect_greedy`; same path on {glue:text}`soft_eq_greedy` of problems | {glue:text}`book_verdict_greedy` | {glue:text}`full_effect_greedy` | {glue:text}`full_verdict_greedy` | {glue:text}`verdict_greedy` |
# | Gumbel-max: the shown token is a sample from $\tilde p$ (Claim 3) | the trick {cite:p}`jang2017gumbel` | frequencies match $\tilde p$ over 20,000 draws, for every $\tau$ | {glue:text}`verdict_gumbel_max` | — | — | {glue:text}`verdict_gumbel_max` |
# | randomness (Gumbel-softmax best) beats vanilla soft thinking at pass@k | eight benchmarks (AIME, AMC, MATH500, GPQA, code); deltas not verified here | pass@{glue:text}`kmax` best Gumbel − soft {glue:text}`effect_random_pk` | {glue:text}`book_verdict_random_pk` | {glue:text}`full_effect_random_pk` | {glue:text}`full_verdict_random_pk` | {glue:text}`verdict_random_pk` |
# | ... at a pass@1 no worse | as above | pass@1 best Gumbel − soft {glue:text}`effect_random_p1` | {glue:text}`book_verdict_random_p1` | {glue:text}`full_effect_random_p1` | {glue:text}`full_verdict_random_p1` | {glue:text}`verdict_random_p1` |
# | Gumbel soft thinking beats discrete sampling | superior performance across the benchmarks (abstract) | pass@1 best Gumbel − sampling {glue:text}`effect_vs_sampling` | {glue:text}`book_verdict_vs_sampling` | {glue:text}`full_effect_vs_sampling` | {glue:text}`full_verdict_vs_sampling` | {glue:text}`verdict_vs_sampling` |
#
# We read the paper's abstract and its official code (`WJMacro/Randomized-Soft-Thinking`: the
# Dirichlet weights through Gamma draws, the Gumbel-softmax over the top-$k$ log-probabilities, and
# the Jensen-Shannon probe against top-1 and top-2 inputs); we could not read its result tables, so
# we quote no number of theirs. The setting differs in every way that could matter: their models
# have 32 billion parameters and were trained on text where a mixture of embeddings can mean
# something; ours has a quarter of a million parameters, never saw a soft input during training,
# and is evaluated on its training problems. The direction of the probe agrees with the paper (the
# top component dominates); the consequences differ, because a model that cannot interpret a
# mixture does not reproduce the greedy path from it (claim 2 fails here in the direction of soft
# thinking being worse), and nothing here can make soft inputs *better* than sampled ones. The
# claims that a randomised decoder *beats* another are not tested, because the task is at its
# ceiling: a held-out set of problems, or a harder graph, would be needed. Exercise 2 trains on
# soft inputs, the obvious next step.

# %% [markdown]
# (soft-thinking-full-scale)=
# ## Full-scale results
#
# The `full` preset trains five models for 1,000 steps and draws 64 samples per problem (about two
# minutes on one GPU). This section shows its committed results file, through the same tables and
# the same verdict function as the `book` run, and never recomputes it:
# {glue:text}`full_status`

# %%
report.glue("full_status", records.status(full, cfg.chapter, "full"))
if full is not None:
    report.show_table(full_means.reset_index())
    report.show_table(full_claims, digits=3)

# %% [markdown]
# ## Summary
#
# - A soft token is the probability-weighted mixture of the top-$k$ token embeddings; vanilla soft
#   thinking feeds it back instead of a sampled token.
# - The probe on a small Llama trained from scratch: the next step follows the top component
#   more than the second ({glue:text}`verdict_probe`). But vanilla soft thinking was not greedy
#   decoding: it solved {glue:text}`soft_p1` of the problems against greedy's
#   {glue:text}`greedy_p1`, because mixtures were off the model's training distribution
#   ({glue:text}`verdict_greedy`).
# - Randomising the weights (Dirichlet, Gumbel-softmax) brings back the accuracy of sampling:
#   against vanilla soft thinking at pass@1, {glue:text}`verdict_random_p1`; at
#   pass@{glue:text}`kmax`, {glue:text}`verdict_random_pk`, because every randomised decoder
#   solves (nearly) every training problem.
# - Gumbel soft thinking shows exactly the tokens of sampling ({glue:text}`verdict_gumbel_max`);
#   what it adds is only in the input. Against discrete sampling at pass@1:
#   {glue:text}`verdict_vs_sampling`.
#
# ## Exercises
#
# 1. *Why* does Claim 3 make Gumbel soft thinking with small $\tau$ indistinguishable from
#    discrete sampling? What would have to be true of the model for large $\tau$ to help?
# 2. *Change the code:* train the model on soft inputs too (replace, with probability 0.5, each
#    input token by a soft token built from the model's own predictions). Does the probe change?
# 3. *Change the code:* show the token of the largest $\tilde p$ instead of the largest $w$ in the
#    randomised methods. What happens to pass@$k$, and why?
# 4. *Run a regime:* `make run NB=notebooks/part2_softmax/15_soft_thinking.ipynb PRESET=book
#    ARGS="-p train_steps 150"`: with an undertrained model, which decoder gains most from $k$?
#
# :::{dropdown} Hint for exercise 1
# With the same Gumbel noise, the argmax of $(\log \tilde p + g)/\tau$ does not depend on $\tau$;
# as $\tau \to 0$ the weights become one-hot at that token, which is exactly a sampled token.
# :::
#
# ## Further reading
#
# - {cite:t}`wu2025singlethreaded`: the paper; probes and randomised soft thinking.
# - {cite:t}`jang2017gumbel`: the Gumbel-softmax distribution.
# - {cite:t}`chen2021codex`: the unbiased pass@k estimator.
