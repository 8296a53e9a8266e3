"""Toy causal LMs of every architecture NoiseFiT supports, built from configs (no download).

Explained in: notebooks/part1_noisefit/02_where_to_inject_noise.py (NoiseFiT on eight
architectures) and book/noisefit_library.md (The pieces). Used by the tests and the cost
benchmark (``tools/bench_noisefit.py``).
"""

from __future__ import annotations

from typing import Any

ARCHS: tuple[str, ...] = ("llama", "qwen2", "mistral", "gemma", "gpt2", "gpt_neox", "phi", "opt")


def toy_config(
    arch: str = "llama",
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab: int = 1000,
    max_positions: int = 128,
    intermediate: int | None = None,
    **extra: Any,
) -> Any:
    """A ``transformers`` config for a toy model of architecture ``arch``.

    Args:
        arch: one of :data:`ARCHS`.
        hidden: model width.
        layers: number of decoder blocks.
        heads: attention heads.
        vocab: vocabulary size.
        max_positions: maximum sequence length.
        intermediate: MLP width (``4 * hidden`` by default).
        **extra: further config fields.

    Returns:
        The config object.

    Raises:
        ValueError: for an unknown architecture.
    """
    import transformers as tf

    ff = intermediate or 4 * hidden
    common = {"vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    llama_like = {
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": True,
    }
    builders = {
        "llama": lambda: tf.LlamaConfig(**llama_like, **common),
        "qwen2": lambda: tf.Qwen2Config(**llama_like, **common),
        "mistral": lambda: tf.MistralConfig(**llama_like, **common),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=hidden // heads, **common),
        "phi": lambda: tf.PhiConfig(**{**llama_like, "tie_word_embeddings": False}, **common),
        "gpt2": lambda: tf.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, **common
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ff,
            max_position_embeddings=max_positions,
            **common,
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_dim=ff,
            word_embed_proj_dim=hidden,
            max_position_embeddings=max_positions,
            **common,
        ),
    }
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; choose {', '.join(ARCHS)}")
    cfg = builders[arch]()
    for key, value in extra.items():
        setattr(cfg, key, value)
    return cfg


def toy_model(arch: str = "llama", *, seed: int = 0, **kwargs: Any) -> Any:
    """A randomly initialised ``AutoModelForCausalLM`` from :func:`toy_config` (fp32).

    Args:
        arch: one of :data:`ARCHS`.
        seed: initialisation seed (uses a forked RNG; the global RNG state is restored).
        **kwargs: passed to :func:`toy_config`.

    Returns:
        The model, in training mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = toy_config(arch, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.train()
    return model
