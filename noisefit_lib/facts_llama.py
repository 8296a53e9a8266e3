"""Part I's model: a word-level tokenizer and a tiny Llama, pretrained on the facts world.

* the word-level tokenizer is :mod:`noisefit_lib.facts_tokenizer`;
* :func:`build_model`: a ``LlamaForCausalLM`` with tied embeddings from a :class:`ModelConfig`;
* :func:`pretrain`: a seeded AdamW loop with the book's one schedule
  (:func:`noisefit_lib.training.warmup_cosine_lr`, with a floor) and optimiser step;
* :func:`load_or_pretrain` and :func:`base_model`: one base model per (model, world,
  pretraining) config and library version, cached on disk (:mod:`noisefit_lib.checkpoints`),
  written atomically and announced when reused.

Answering and scoring with these models is :mod:`noisefit_lib.answers`. ``transformers`` is
imported inside the functions that need it, so importing this module is cheap.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py. Used by every chapter of
Part I.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import noisefit_lib
from noisefit_lib import checkpoints, facts, runtime, training
from noisefit_lib.checkpoints import INFO_FILE
from noisefit_lib.facts_tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, encode
from noisefit_lib.noisefit.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the tiny Llama (the vocabulary size comes from the tokenizer).

    Attributes:
        hidden: model width d.
        layers: decoder blocks L.
        heads: attention heads (and key-value heads).
        intermediate: MLP width (``4 * hidden`` when ``None``).
        max_positions: longest sequence, in tokens.
        rope_theta: RoPE base.
    """

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int | None = None
    max_positions: int = 128
    rope_theta: float = 10000.0

    def llama_config(self, vocab_size: int) -> LlamaConfig:
        """The ``transformers.LlamaConfig`` of this shape, with tied input/output embeddings."""
        checkpoints.import_transformers()
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate or 4 * self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            tie_word_embeddings=True,
        )


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of :func:`pretrain`.

    Attributes:
        steps: optimiser steps.
        batch_size: texts per step.
        lr: peak learning rate (Llama at 3e-3 without warm-up stalls; mlstack.md 2.2).
        warmup: linear warm-up steps.
        min_lr_ratio: the cosine decay ends at ``min_lr_ratio * lr``.
        weight_decay: AdamW weight decay.
        grad_clip: clip the gradient norm to this (``0`` disables).
        amp: bf16 autocast for the forward pass on a GPU that supports bf16 (elsewhere, and on
            CPU, fp32); the history records which (``amp_dtype``).
        seed: seeds the initialisation and the batch order.
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    amp: bool = False
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: the book's warm-up-cosine schedule, with the floor.

        That is :func:`noisefit_lib.training.warmup_cosine_lr` with this config's values.
        """
        return training.warmup_cosine_lr(
            step,
            peak_lr=self.lr,
            warmup_steps=self.warmup,
            total_steps=self.steps,
            floor=self.min_lr_ratio,
        )


BASE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "world": {"n_known": 40, "n_unknown": 12, "n_attributes": 2, "n_bios": 2},
        "model": {"hidden": 32, "layers": 1, "heads": 2, "max_positions": 64},
        "pretrain": {"steps": 80, "batch_size": 16, "lr": 1e-2, "warmup": 10},
    },
    "book": {
        "world": {"n_known": 120, "n_unknown": 40, "n_attributes": 4, "n_bios": 4},
        "model": {"hidden": 128, "layers": 2, "heads": 4, "max_positions": 64},
        "pretrain": {"steps": 300, "batch_size": 32, "lr": 2e-3, "warmup": 50},
    },
    "full": {
        "world": {
            "n_known": 5000,
            "n_unknown": 1000,
            "n_attributes": 6,
            "n_bios": 4,
            "n_first_names": 120,
            "n_last_names": 120,
        },
        "model": {"hidden": 512, "layers": 8, "heads": 8, "max_positions": 96},
        "pretrain": {"steps": 3000, "batch_size": 256, "lr": 1e-3, "warmup": 200, "amp": True},
    },
}
"""The shared base model of each preset: world, model and pretraining settings.

Chapters 1-6 of Part I build their base model with :func:`base_configs` (or :func:`base_model`)
from these, so they share one cached model per preset and seed. ``book`` pretrains in about
35 CPU seconds; ``full`` is a 5,000-person world and a 34M-parameter Llama for one GPU.
"""


def base_configs(
    preset: str, *, seed: int = 0, **overrides: Any
) -> tuple[facts.WorldConfig, ModelConfig, PretrainConfig]:
    """The (world, model, pretraining) configs of a preset, seeded, with optional overrides.

    Args:
        preset: a key of :data:`BASE_PRESETS`.
        seed: the seed of both the world and the pretraining (init and batch order).
        **overrides: fields of any of the three configs (e.g. ``steps=100``, ``n_known=60``);
            ``None`` values are ignored.

    Raises:
        ValueError: for an unknown preset or field.
    """
    if preset not in BASE_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(BASE_PRESETS)}")
    parts = {k: dict(v) for k, v in BASE_PRESETS[preset].items()}
    classes = {"world": facts.WorldConfig, "model": ModelConfig, "pretrain": PretrainConfig}
    fields = {k: set(c.__dataclass_fields__) for k, c in classes.items()}
    for name, value in overrides.items():
        if value is None:
            continue
        owner = [k for k, f in fields.items() if name in f]
        if not owner or name == "seed":
            valid = sorted((fields["world"] | fields["model"] | fields["pretrain"]) - {"seed"})
            raise ValueError(f"unknown setting {name!r}; valid: {', '.join(valid)}")
        parts[owner[0]][name] = value
    return (
        facts.WorldConfig(**parts["world"], seed=seed),
        ModelConfig(**parts["model"]),
        PretrainConfig(**parts["pretrain"], seed=seed),
    )


# -- tokenizer and model ----------------------------------------------------------------------


def build_model(config: ModelConfig, vocab_size: int, *, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised tiny ``LlamaForCausalLM`` (fp32, training mode).

    Args:
        config: the shape.
        vocab_size: the tokenizer's vocabulary size.
        seed: initialisation seed (a forked RNG: the global torch state is left as it was).
    """
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config.llama_config(vocab_size))
    model.train()
    return model


def n_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# -- pretraining --------------------------------------------------------------------------------


def batch_order(n_texts: int, config: PretrainConfig) -> torch.Tensor:
    """Text indices for every step, shape (steps, batch_size): reshuffled each epoch, seeded."""
    generator = runtime.stream(config.seed, "pretrain-order")
    needed = config.steps * config.batch_size
    epochs = [torch.randperm(n_texts, generator=generator) for _ in range(-(-needed // n_texts))]
    return torch.cat(epochs)[:needed].view(config.steps, config.batch_size)


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    config: PretrainConfig,
    *,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Train ``model`` in place on ``texts`` with next-token cross-entropy on every real token.

    Args:
        model: a causal LM (its device is used).
        tokenizer: the tokenizer of ``texts``.
        texts: the corpus, e.g. ``World.pretraining_corpus()``.
        config: the optimisation settings.
        progress: show a tqdm bar (on stderr).

    Returns:
        ``{"loss": [...], "lr": [...]}``, one entry per step (mean loss per token, nats).
    """
    device = next(model.parameters()).device
    data = encode(tokenizer, texts)
    if max(len(s) for s in data) > model.config.max_position_embeddings:
        raise ValueError("a text is longer than the model's max_positions")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay}],
        lr=config.lr,
        weight_decay=0.0,
    )
    order = batch_order(len(data), config)
    steps = range(config.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="pretraining", mininterval=2.0)
    history: dict[str, Any] = {"loss": [], "lr": []}
    amp_dtype = runtime.autocast_dtype(device.type) if config.amp else None  # bf16 where supported
    history["amp_dtype"] = str(amp_dtype) if amp_dtype is not None else "float32"
    autocast = contextlib.nullcontext()
    if amp_dtype is not None:
        autocast = torch.autocast("cuda", dtype=amp_dtype)
    model.train()
    for step in steps:
        lr = config.lr_at(step)
        training.set_lr(optimizer, lr)
        ids, mask = training.pad([data[int(i)] for i in order[step]], pad_id=PAD_ID)
        ids, mask = ids.to(device), mask.to(device)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        training.optimizer_step(
            optimizer, loss, clip_params=model.parameters(), max_grad_norm=config.grad_clip
        )
        history["loss"].append(float(loss.detach()))
        history["lr"].append(lr)
    model.eval()
    return history


# -- the cached base model ----------------------------------------------------------------------


@dataclass
class BaseModel:
    """A pretrained base model, its tokenizer and how it was made.

    Attributes:
        model: the ``LlamaForCausalLM`` (eval mode, on the requested device).
        tokenizer: its tokenizer.
        key: the cache key (SHA-256 hex).
        path: the cache folder it was loaded from.
        from_cache: ``True`` when it was reused, ``False`` when pretrained in this call.
        history: ``{"loss", "lr"}`` per step, ``"seconds"`` of pretraining and the configs.
    """

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    key: str
    path: Path
    from_cache: bool
    history: dict[str, Any]


def cache_key(
    model_config: ModelConfig, world_config: facts.WorldConfig, pretrain_config: PretrainConfig
) -> str:
    """SHA-256 of the three configs and ``noisefit_lib.__version__``: equal key, equal model."""
    record = {
        "model": asdict(model_config),
        "world": world_config.to_dict(),
        "pretrain": asdict(pretrain_config),
        "version": noisefit_lib.__version__,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def load_or_pretrain(
    world: facts.World,
    model_config: ModelConfig,
    pretrain_config: PretrainConfig,
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = False,
    verbose: bool = True,
) -> BaseModel:
    """The base model of ``world``: loaded from the cache if present, else pretrained and cached.

    The cache folder is ``cache_dir / f"base-{key[:16]}"`` with ``key`` from :func:`cache_key`.
    A freshly pretrained model is saved atomically and then reloaded from disk, so a cached and
    a fresh run return bitwise the same weights.

    Args:
        world: the world whose corpus and vocabulary the model learns.
        model_config: the model's shape.
        pretrain_config: the optimisation settings (its seed seeds init and batch order).
        cache_dir: where base models live (default
            :func:`noisefit_lib.checkpoints.default_cache_dir`).
        device: where to train and put the model.
        progress: show a progress bar while pretraining.
        verbose: print one line saying whether the model was loaded or pretrained.
    """
    key = cache_key(model_config, world.config, pretrain_config)
    path = Path(cache_dir or checkpoints.default_cache_dir()) / f"base-{key[:16]}"
    from_cache = checkpoints.is_saved(path)
    if not from_cache:
        tokenizer = build_tokenizer(world.vocabulary())
        model = build_model(model_config, len(tokenizer), seed=pretrain_config.seed).to(device)
        start = time.perf_counter()
        history: dict[str, Any] = dict(
            pretrain(
                model, tokenizer, world.pretraining_corpus(), pretrain_config, progress=progress
            )
        )
        history["seconds"] = time.perf_counter() - start
        history["device"] = device
        history["configs"] = {
            "model": asdict(model_config),
            "world": world.config.to_dict(),
            "pretrain": asdict(pretrain_config),
            "version": noisefit_lib.__version__,
        }
        checkpoints.save_pretrained_atomic(model.cpu(), tokenizer, path, extra=history)
        del model
    model, tokenizer = checkpoints.load_pretrained(path, device=device)
    history = json.loads((path / INFO_FILE).read_text())
    if verbose:
        verb = (
            "loaded cached" if from_cache else f"pretrained ({history['seconds']:.1f} s) and cached"
        )
        print(f"{verb} base model {key[:12]}")
    return BaseModel(model, tokenizer, key, path, from_cache, history)


def base_model(
    preset: str,
    *,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
    verbose: bool = True,
    **overrides: Any,
) -> tuple[facts.World, BaseModel]:
    """The world and cached base model of a preset: what every Part I chapter starts from.

    Args:
        preset: a key of :data:`BASE_PRESETS`.
        seed: seed of the world and of the pretraining.
        device: where to put (and if needed train) the model.
        cache_dir: the cache (default :func:`noisefit_lib.checkpoints.default_cache_dir`).
        progress: show a progress bar if the model must be pretrained.
        verbose: print whether it was loaded or pretrained.
        **overrides: passed to :func:`base_configs`.
    """
    world_config, model_config, pretrain_config = base_configs(preset, seed=seed, **overrides)
    world = facts.World(world_config)
    base = load_or_pretrain(
        world,
        model_config,
        pretrain_config,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
        verbose=verbose,
    )
    return world, base


__all__ = [
    "BASE_PRESETS",
    "BaseModel",
    "ModelConfig",
    "PretrainConfig",
    "base_configs",
    "base_model",
    "batch_order",
    "build_model",
    "cache_key",
    "load_or_pretrain",
    "n_parameters",
    "pretrain",
]
