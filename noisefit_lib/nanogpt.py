"""Part II's nanoGPT-style decoder: a small transformer with pluggable attention and head.

The model follows nanoGPT: token embeddings (plus learned positions, or rotary positions
inside attention), pre-norm blocks of causal self-attention and an MLP, a final LayerNorm and a
linear output head. Two parts are pluggable:

* the **attention normaliser**: a callable ``normaliser(q, k) -> weights`` that turns queries
  and keys of shape (B, H, T, Dh) into causal attention weights of shape (B, H, T, T). Names in
  :data:`NORMALISERS` select the ones the book defines (softmax, softplus, LSSA, LSSAR, linear);
  :func:`set_normaliser` swaps them in a trained model (inference-time re-weighting);
* the **sequence mixer** and the **output head**: any module built by a factory.

Explained in: notebooks/part2_softmax/10_softplus_attention.py (normalisers) and
notebooks/part2_softmax/14_attention_as_dynamical_system.py (mixers). Cite: gao2025softplus,
sieber2024dsf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from noisefit_lib import training
from noisefit_lib.noisefit.losses import IGNORE_INDEX

Normaliser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal_mask(t: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend to key j (j <= i)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def keys_visible(t: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Number of keys N_i = i + 1 each query row sees under the causal mask, shape (T, 1)."""
    return torch.arange(1, t + 1, device=device, dtype=torch.float32).unsqueeze(-1)


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot products q k^T / sqrt(Dh), shape (B, H, T, T)."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def softmax_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention weights: exp of the scores, l1-normalised per row."""
    s = _scores(q, k).masked_fill(~causal_mask(q.shape[-2], q.device), -math.inf)
    return torch.softmax(s, dim=-1)


def l1_normalise(phi: torch.Tensor) -> torch.Tensor:
    """Divide non-negative, causally masked weights by their row sums (B, H, T, T)."""
    return phi / phi.sum(dim=-1, keepdim=True)


def log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)) without underflow: below x = -20, softplus(x) = e^x to float precision."""
    safe = F.softplus(x.clamp_min(-20.0))
    return torch.where(x < -20.0, x, torch.log(safe))


def softplus_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Plain softplus-l1 attention: softplus(q k^T / sqrt(Dh)), masked and l1-normalised per row.

    The ratio is computed in log space (a softmax of :func:`log_softplus`), which is the same
    number but stays finite when every score of a row is so negative that softplus underflows.

    Args:
        q: queries (B, H, T, Dh).
        k: keys (B, H, T, Dh).
    """
    t = q.shape[-2]
    log_phi = log_softplus(_scores(q, k)).masked_fill(~causal_mask(t, q.device), -math.inf)
    return torch.softmax(log_phi, dim=-1)


def lssa_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Length-scaled softplus attention (LSSA) of Gao et al.: the normalisation stage.

    Queries and keys are l2-normalised (so the dot products are cosines in [-1, 1]), row i is
    multiplied by ``log(Dh) * log(N_i)`` with N_i = i + 1 the number of keys it sees, then
    softplus, the causal mask and an l1 normalisation per row (computed in log space, as in
    :func:`softplus_attention`).

    Args:
        q: queries (B, H, T, Dh).
        k: keys (B, H, T, Dh).
    """
    t, dh = q.shape[-2], q.shape[-1]
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    s = math.log(dh) * torch.log(keys_visible(t, q.device)).to(cos.dtype) * cos
    log_phi = log_softplus(s).masked_fill(~causal_mask(t, q.device), -math.inf)
    return torch.softmax(log_phi, dim=-1)


def reweight(
    a: torch.Tensor, power: float, offset: float = 1.0, free_rows: int = 3
) -> torch.Tensor:
    """Sharpen causal attention rows (re-weighting): relu(N_i a_ij - O_i)^p, l1-normalised.

    O_i = ``offset`` (the uniform level 1/N_i, in units of 1/N_i), except O_i = 0 on the first
    ``free_rows`` rows, which see too few keys to threshold. Weights above O_i / N_i grow, the rest
    drop to zero. A row with nothing above its threshold (only an exactly uniform row) would be
    0/0; it is returned unchanged. The power is taken after dividing by the row maximum, which
    cancels in the ratio and keeps large powers from overflowing.

    Args:
        a: attention weights (B, H, T, T), rows summing to 1 over j <= i.
        power: the exponent p (p = 1: only the offset acts).
        offset: the threshold O_i on rows past ``free_rows``, in units of the uniform weight.
        free_rows: number of leading rows with O_i = 0.
    """
    t = a.shape[-1]
    o = torch.full((t, 1), offset, device=a.device, dtype=a.dtype)
    o[:free_rows] = 0.0
    x = F.relu(a * keys_visible(t, a.device).to(a.dtype) - o)
    peak = x.amax(dim=-1, keepdim=True)
    x = (x / peak.clamp_min(torch.finfo(x.dtype).tiny)) ** power
    total = x.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), a)


def lssar_attention(q: torch.Tensor, k: torch.Tensor, power: float = 15.0) -> torch.Tensor:
    """LSSA followed by :func:`reweight` with exponent ``power`` (LSSAR)."""
    return reweight(lssa_attention(q, k), power)


def linear_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal linear attention weights phi(q_i).phi(k_j) / sum_j' (...), phi = elu + 1."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    phi = (fq @ fk.transpose(-2, -1)).masked_fill(~causal_mask(q.shape[-2], q.device), 0.0)
    return l1_normalise(phi)


NORMALISERS: dict[str, Normaliser] = {
    "softmax": softmax_attention,
    "softplus": softplus_attention,
    "lssa": lssa_attention,
    "lssar": lssar_attention,
    "linear": linear_attention,
}


def get_normaliser(normaliser: str | Normaliser) -> Normaliser:
    """Return ``normaliser`` if callable, else look its name up in :data:`NORMALISERS`."""
    if callable(normaliser):
        return normaliser
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; known: {', '.join(NORMALISERS)}")
    return NORMALISERS[normaliser]


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of (B, H, T, Dh) at positions 0..T-1 (Dh even; half-split)."""
    t, dh = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
    angles = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv_freq  # (T, Dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass(frozen=True)
class GPTConfig:
    """Sizes and options of :class:`NanoGPT`.

    Attributes:
        vocab_size: number of tokens.
        d_model: width of the residual stream.
        n_layer: number of blocks.
        n_head: attention heads per block (d_model must divide by it).
        pos: ``"rope"`` (rotary, no length limit), ``"learned"`` (up to ``block_size``) or
            ``"none"``.
        block_size: longest sequence for learned positions.
        mlp_ratio: MLP hidden width over d_model.
        normaliser: name in :data:`NORMALISERS` (a callable can be passed to the model instead).
        rope_base: RoPE frequency base.
        tie_weights: share the token embedding with the linear output head.
    """

    vocab_size: int
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    pos: Literal["rope", "learned", "none"] = "rope"
    block_size: int = 256
    mlp_ratio: int = 4
    normaliser: str = "softmax"
    rope_base: float = 10000.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} must divide by n_head {self.n_head}")
        if self.pos not in ("rope", "learned", "none"):
            raise ValueError(f"pos must be rope, learned or none, got {self.pos!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention whose weights come from ``self.normaliser``."""

    def __init__(self, cfg: GPTConfig, normaliser: str | Normaliser | None = None) -> None:
        super().__init__()
        self.n_head, self.use_rope, self.rope_base = cfg.n_head, cfg.pos == "rope", cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.normaliser = get_normaliser(normaliser or cfg.normaliser)
        self.last_weights: torch.Tensor | None = None  # kept only when keep_weights is True
        self.keep_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix (B, T, D) along time; returns (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if self.use_rope:
            q, k = rope(q, self.rope_base), rope(k, self.rope_base)
        a = self.normaliser(q, k)  # (B, H, T, T)
        if self.keep_weights:
            self.last_weights = a.detach()
        y = (a @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + mixer(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig, mixer: nn.Module) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.mixer = mixer
        hidden = cfg.mlp_ratio * cfg.d_model
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        x = x + self.mixer(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class NanoGPT(nn.Module):
    """Decoder-only transformer; ``forward(idx)`` returns logits (B, T, vocab_size).

    Args:
        cfg: sizes and options.
        normaliser: attention normaliser (name or callable); default ``cfg.normaliser``.
        mixer: factory ``mixer(cfg) -> nn.Module`` mapping (B, T, D) to (B, T, D), used in every
            block instead of :class:`CausalSelfAttention` (an SSM, an RNN, ...).
        head: output module mapping (B, T, D) to (B, T, V); default a linear layer (tied to the
            embedding when ``cfg.tie_weights``).
        generator: seeds the initial weights (normal, std 0.02, as nanoGPT).
    """

    def __init__(
        self,
        cfg: GPTConfig,
        normaliser: str | Normaliser | None = None,
        mixer: Callable[[GPTConfig], nn.Module] | None = None,
        head: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos == "learned" else None

        def make_mixer() -> nn.Module:
            return mixer(cfg) if mixer is not None else CausalSelfAttention(cfg, normaliser)

        self.blocks = nn.ModuleList([Block(cfg, make_mixer()) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self._init_weights(generator)
        if head is None:
            head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_weights:
                head.weight = self.tok.weight
        self.head = head

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V)."""
        x = self.tok(idx)
        if self.pos is not None:
            if idx.shape[1] > self.cfg.block_size:
                raise ValueError(f"sequence of {idx.shape[1]} > block_size {self.cfg.block_size}")
            x = x + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats) of next-token targets (B, T); -100 entries are ignored."""
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def set_normaliser(model: nn.Module, normaliser: str | Normaliser) -> None:
    """Replace the normaliser of every :class:`CausalSelfAttention` in ``model`` (in place)."""
    fn = get_normaliser(normaliser)
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.normaliser = fn


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def generate(model: NanoGPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: append the arg-max token ``max_new_tokens`` times; (B, T) -> (B, T + n).

    Each step re-runs the whole prefix (no key-value cache), which is simple and fast enough for
    the book's short sequences.
    """
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        context = idx if model.pos is None else idx[:, -model.cfg.block_size :]
        next_token = model(context)[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, next_token], dim=1)
    model.train(was_training)
    return idx


def train_lm(
    model: nn.Module,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    num_steps: int,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    warmup: int = 20,
) -> list[float]:
    """Train with AdamW and the book's warm-up-cosine schedule (no floor); return the losses.

    The schedule is :func:`noisefit_lib.training.warmup_cosine_lr` (cosine decay to zero over
    the steps after the warm-up); the step is :func:`noisefit_lib.training.optimizer_step`
    (gradient norm clipped at 1).

    Args:
        model: a model with a ``loss(idx, targets)`` method (as :class:`NanoGPT`).
        batches: ``batches(step) -> (idx, targets)``, both (B, T), already on the model's device.
        num_steps: optimisation steps.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: steps of linear warm-up.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for step in range(num_steps):
        training.set_lr(
            opt,
            training.warmup_cosine_lr(step, peak_lr=lr, warmup_steps=warmup, total_steps=num_steps),
        )
        idx, targets = batches(step)
        loss = model.loss(idx, targets)
        training.optimizer_step(opt, loss, clip_params=model.parameters(), max_grad_norm=1.0)
        losses.append(loss.detach())  # no host sync per step (matters on a GPU)
    model.eval()
    return torch.stack(losses).tolist() if losses else []
