"""Hugging Face checkpoints on disk: the model cache, atomic saving, loading, a quiet import.

Part I keeps two kinds of model in one cache folder (:func:`default_cache_dir`): the pretrained
base Llamas of :mod:`noisefit_lib.facts_llama` and the converted SmolLM2 of
:mod:`noisefit_lib.smollm2`. Both are written with :func:`save_pretrained_atomic` (a reader never
sees a half-written folder) and read with :func:`load_pretrained`, the book's one
``from_pretrained(name_or_path)`` path. ``transformers`` is imported inside the functions.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py (the cached base model) and
notebooks/part1_noisefit/06_noisefit_on_your_model.py (loading a checkpoint by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from noisefit_lib import records

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INFO_FILE = "pretrain.json"
"""The JSON file saved next to a checkpoint: how it was made (history, configs, source)."""


def import_transformers() -> None:
    """Import ``transformers`` once, without tqdm's "IProgress not found" notebook warning.

    ``transformers`` imports ``tqdm.auto``, which warns in a notebook without ipywidgets; the
    warning names an absolute path, so it would make stored notebook outputs machine-specific.
    Only that warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers  # noqa: F401


def default_cache_dir() -> Path:
    """``$NOISEFIT_CACHE_DIR`` if set, else ``cache/`` inside :func:`records.runs_dir`."""
    if "NOISEFIT_CACHE_DIR" in os.environ:
        return Path(os.environ["NOISEFIT_CACHE_DIR"])
    return records.runs_dir() / "cache"


def load_pretrained(
    path: str | Path, *, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model (fp32, eval mode) and tokenizer saved with ``save_pretrained``.

    ``path`` is a folder or a hub id; the tests and the book use folders.
    """
    import_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.eval()
    return model, tokenizer


def save_pretrained_atomic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
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
        extra: JSON-serialisable data written as :data:`INFO_FILE` in the folder.

    Returns:
        ``path``.
    """
    import_transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / INFO_FILE).write_text(json.dumps(extra, indent=1, sort_keys=True))
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "config.json").is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return path


def is_saved(path: str | Path) -> bool:
    """Whether ``path`` holds a complete checkpoint written by :func:`save_pretrained_atomic`."""
    path = Path(path)
    return (path / "config.json").is_file() and (path / INFO_FILE).is_file()


__all__ = [
    "INFO_FILE",
    "default_cache_dir",
    "import_transformers",
    "is_saved",
    "load_pretrained",
    "save_pretrained_atomic",
]
