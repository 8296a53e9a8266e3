"""Shared paths and fixtures for the test suite."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_SCRIPTS = sorted(p for p in (ROOT / "notebooks").glob("*/[0-9][0-9]_*.py"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run each test module on one thread: deterministic, and fast on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real BPE tokenizer and chat template, read from the local GGUF."""
    from noisefit_lib import smollm2

    try:
        gguf = smollm2.gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        pytest.skip(str(err))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
