"""A word-level tokenizer and a tiny Llama, pretrained on a :mod:`noisefit_lib.facts` world.

* :func:`build_tokenizer`: the ``tokenizers`` WordLevel + WhitespaceSplit recipe wrapped as a
  ``transformers`` ``PreTrainedTokenizerFast`` (``<pad> <bos> <eos> <unk>`` are ids 0-3; every
  text is wrapped as ``<bos> ... <eos>``), so ``save_pretrained``/``from_pretrained``, the HF
  ``Trainer`` and PEFT work as on a real model;
* :func:`build_model`: a ``LlamaForCausalLM`` with tied embeddings from a :class:`ModelConfig`;
* :func:`pretrain`: a seeded AdamW loop with linear warm-up and cosine decay;
* :func:`generate_answers` and :func:`evaluate`: greedy answers (left padding, the appended
  ``<eos>`` stripped from prompts), their sequence probability as a confidence, and the
  world's scores;
* :func:`load_or_pretrain`: one base model per (model, world, pretraining) config and library
  version, cached on disk, written atomically and announced when reused.

``transformers`` is imported inside the functions that need it, so importing this module is
cheap.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py. Used by Part I.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import noisefit_lib
from noisefit_lib import facts, runtime

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens, with ids 0, 1, 2, 3."""
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
IGNORE_INDEX = -100
HISTORY_FILE = "pretrain.json"


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
        _import_transformers()
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
        amp: bf16 autocast for the forward pass on CUDA (ignored on CPU, which stays fp32).
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


def _import_transformers() -> None:
    """Import ``transformers`` once, without tqdm's "IProgress not found" notebook warning.

    ``transformers`` imports ``tqdm.auto``, which warns in a notebook without ipywidgets; the
    warning names an absolute path, so it would make stored notebook outputs machine-specific.
    Only that warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers  # noqa: F401


# -- tokenizer and model ----------------------------------------------------------------------


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` plus :data:`SPECIAL_TOKENS` (ids 0-3).

    Text is split on whitespace only; unknown words map to ``<unk>``; every encoded text is
    wrapped as ``<bos> ... <eos>``. Padding is on the right (set ``padding_side="left"`` to
    batch prompts for generation, as :func:`generate_answers` does by hand).

    Args:
        words: the vocabulary (duplicates are ignored; order fixes the ids).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    _import_transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


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


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, ``<bos> ... <eos>`` included; fails on out-of-vocabulary words."""
    ids = tokenizer(list(texts))["input_ids"]
    for text, seq in zip(texts, ids, strict=True):
        if UNK_ID in seq:
            raise ValueError(f"out-of-vocabulary word in {text!r}")
    return [list(s) for s in ids]


def pad(
    sequences: Sequence[Sequence[int]], *, side: str = "right", pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into ``(input_ids, attention_mask)``, both long tensors of shape (B, T)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


# -- pretraining --------------------------------------------------------------------------------


def lr_at(step: int, config: PretrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to the minimum."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


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
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    use_amp = config.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    model.train()
    for step in steps:
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, mask = pad([data[int(i)] for i in order[step]])
        ids, mask = ids.to(device), mask.to(device)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        history["loss"].append(float(loss.detach()))
        history["lr"].append(lr)
    model.eval()
    return history


# -- answering and scoring ----------------------------------------------------------------------


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts for generation: ``<bos> ...`` with the appended ``<eos>`` stripped."""
    return [seq[:-1] if seq and seq[-1] == EOS_ID else seq for seq in encode(tokenizer, prompts)]


@torch.no_grad()
def greedy_tokens(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuation of one left-padded batch, with the log-probability of each new token.

    Args:
        model: the causal LM (its device is used); a PEFT model works too.
        ids: prompt token ids, left-padded, shape (B, T).
        mask: their attention mask, shape (B, T).
        pad_id: the padding token id.
        eos_id: the token id that ends a continuation.
        max_new_tokens: tokens to generate per row.

    Returns:
        ``(new, token_logp)``: the generated ids per row (padded after an end with ``pad_id``)
        and their log-probabilities under the model, shape (B, n_new), on the CPU.
    """
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,  # greedy: clear sampling defaults a checkpoint's config may carry
        top_p=None,
        top_k=None,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :].cpu()  # (B, n_new)
    logp = torch.stack(out.logits, dim=1).float().log_softmax(-1).cpu()  # (B, n_new, V)
    return new.tolist(), logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def generate_answers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 4,
    batch_size: int = 256,
) -> tuple[list[str], np.ndarray]:
    """Greedy continuations of ``prompts`` and the probability of each answer.

    Prompts are left-padded into batches and passed to ``model.generate`` (greedy,
    ``max_new_tokens``). The confidence of a continuation is the product of the model's
    probabilities of its answer tokens: those before the first end token (``.``) or special
    token, and at least the first generated token.

    Args:
        model: the causal LM (its device is used).
        tokenizer: its tokenizer.
        prompts: question texts ending in ``A:``.
        max_new_tokens: tokens to generate per prompt.
        batch_size: prompts per ``generate`` call.

    Returns:
        ``(texts, confidence)``: the decoded continuations (special tokens kept, so the
        scorer sees where the answer ended) and an array of shape (N,) with values in [0, 1].
    """
    was_training = model.training
    model.eval()
    end_id = tokenizer.convert_tokens_to_ids(facts.END)
    texts: list[str] = []
    confidence: list[float] = []
    ids_all = prompt_ids(tokenizer, prompts)
    for start in range(0, len(ids_all), batch_size):
        ids, mask = pad(ids_all[start : start + batch_size], side="left")
        new, token_logp = greedy_tokens(
            model, ids, mask, pad_id=PAD_ID, eos_id=EOS_ID, max_new_tokens=max_new_tokens
        )
        for row, row_logp in zip(new, token_logp, strict=True):
            stop = next((k for k, t in enumerate(row) if t == end_id or t < len(SPECIAL_TOKENS)),
                        len(row))  # fmt: skip
            confidence.append(float(row_logp[: max(1, stop)].sum().exp()))
            texts.append(tokenizer.decode([t for t in row if t != PAD_ID]))
    model.train(was_training)
    return texts, np.asarray(confidence)


@dataclass
class Evaluation:
    """Answers of a model to a list of QA items, scored.

    Attributes:
        items: the questions.
        generated: the raw continuations.
        answers: the parsed answers (:func:`facts.parse_answer`).
        outcomes: one of :data:`facts.OUTCOMES` per item.
        confidence: the probability of each answer, shape (N,).
    """

    items: list[facts.QAItem]
    generated: list[str]
    answers: list[str]
    outcomes: list[str]
    confidence: np.ndarray = field(repr=False)

    def counts(self) -> dict[str, int]:
        """Counts of each outcome."""
        return facts.outcome_counts(self.outcomes)

    def rates(self) -> dict[str, float]:
        """Fraction of each outcome."""
        return facts.outcome_rates(self.outcomes)

    def correct(self) -> np.ndarray:
        """Boolean array: which answers were correct."""
        return np.array([o == "correct" for o in self.outcomes])


def evaluate(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    world: facts.World,
    items: Sequence[facts.QAItem],
    *,
    max_new_tokens: int = 4,
    batch_size: int = 256,
) -> Evaluation:
    """Answer ``items`` greedily with :func:`generate_answers` and score them with ``world``."""
    generated, confidence = generate_answers(
        model,
        tokenizer,
        [it.prompt for it in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    answers = [facts.parse_answer(g) for g in generated]
    return Evaluation(
        items=list(items),
        generated=generated,
        answers=answers,
        outcomes=world.score_all(answers, items),
        confidence=confidence,
    )


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


def default_cache_dir() -> Path:
    """``$NOISEFIT_CACHE_DIR`` if set, else ``cache/`` inside :func:`runtime.runs_dir`."""
    if "NOISEFIT_CACHE_DIR" in os.environ:
        return Path(os.environ["NOISEFIT_CACHE_DIR"])
    return runtime.runs_dir() / "cache"


def load_pretrained(
    path: str | Path, *, device: str = "cpu"
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load a model and tokenizer saved with ``save_pretrained`` (a folder or a hub id).

    This is the book's one ``from_pretrained(name_or_path)`` path; the tests use a folder.
    """
    _import_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.eval()
    return model, tokenizer


def save_pretrained_atomic(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    path: str | Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then rename it to ``path``.

    A reader never sees a half-written folder. If ``path`` already exists (another process
    finished first), the new copy is discarded and the existing one kept.

    Args:
        model: the model.
        tokenizer: its tokenizer.
        path: the final folder.
        extra: JSON-serialisable data written as :data:`HISTORY_FILE` in the folder.

    Returns:
        ``path``.
    """
    _import_transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / HISTORY_FILE).write_text(json.dumps(extra, indent=1, sort_keys=True))
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "config.json").is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return path


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
        cache_dir: where base models live (default :func:`default_cache_dir`).
        device: where to train and put the model.
        progress: show a progress bar while pretraining.
        verbose: print one line saying whether the model was loaded or pretrained.
    """
    key = cache_key(model_config, world.config, pretrain_config)
    path = Path(cache_dir or default_cache_dir()) / f"base-{key[:16]}"
    from_cache = (path / "config.json").is_file() and (path / HISTORY_FILE).is_file()
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
        save_pretrained_atomic(model.cpu(), tokenizer, path, extra=history)
        del model
    model, tokenizer = load_pretrained(path, device=device)
    history = json.loads((path / HISTORY_FILE).read_text())
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
        cache_dir: the cache (default :func:`default_cache_dir`).
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
    "BOS_ID",
    "EOS_ID",
    "IGNORE_INDEX",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "BaseModel",
    "Evaluation",
    "ModelConfig",
    "PretrainConfig",
    "base_configs",
    "base_model",
    "batch_order",
    "build_model",
    "build_tokenizer",
    "cache_key",
    "default_cache_dir",
    "encode",
    "evaluate",
    "generate_answers",
    "greedy_tokens",
    "load_or_pretrain",
    "load_pretrained",
    "lr_at",
    "n_parameters",
    "pad",
    "pretrain",
    "prompt_ids",
    "save_pretrained_atomic",
]
