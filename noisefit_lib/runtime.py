"""Run-time plumbing every chapter shares: presets, seeding, device, threads, result files.

A chapter declares its presets as a plain dict and calls :func:`resolve` once, in its setup
cell, with the values of its papermill ``parameters`` cell::

    PRESETS = {"smoke": {"n_steps": 20}, "book": {"n_steps": 200}, "full": {"n_steps": 5000}}
    cfg = runtime.resolve("two_pass_softmax", PRESETS, preset, seed=seed, device=device,
                          n_steps=n_steps)   # None keeps the preset's value
    cfg.n_steps                            # -> 200 under the book preset

:func:`resolve` validates every name and value (unknown ones fail with a message that lists the
valid ones), seeds Python, NumPy and torch, picks the device, pins CPU threads and flushes
denormals. Results files are :mod:`noisefit_lib.records`' business.

Explained in: book/running.md. Used by every chapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PRESET_NAMES = ("smoke", "book", "full")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one chapter run.

    Preset values are read as attributes (``cfg.n_steps``); ``values`` holds them all, and
    ``overrides`` the ones the caller changed from the preset.
    """

    chapter: str
    preset: str
    seed: int
    device: str
    values: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(f"{name!r} is not a setting of this run; settings: {sorted(values)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view: what a results file records as the config."""
        return {
            "chapter": self.chapter,
            "preset": self.preset,
            "seed": self.seed,
            "device": self.device,
            **dict(self.values),
            "overrides": dict(self.overrides),
        }

    @property
    def run_name(self) -> str:
        """``book-seed0``, plus a short hash of the overrides when there are any.

        Two runs of one chapter with different overrides never share a name, so a sweep does not
        overwrite itself.
        """
        name = f"{self.preset}-seed{self.seed}"
        if self.overrides:
            text = json.dumps(dict(self.overrides), sort_keys=True, default=str)
            name += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        return name

    def summary(self) -> str:
        """One deterministic line per setting, for the chapter's recap cell."""
        lines = [f"preset={self.preset} seed={self.seed} device={self.device}"]
        lines += [f"  {key} = {self.values[key]!r}" for key in sorted(self.values)]
        return "\n".join(lines)


def _check_type(name: str, value: Any, default: Any) -> None:
    """Raise ``TypeError`` when an override's type does not fit the preset's default."""
    if default is None or value is None:
        return
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return  # 3 where 3.0 is expected is fine
    if expected in (list, tuple) and isinstance(value, list | tuple):
        return
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise TypeError(
            f"{name} must be {expected.__name__} (like {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )


def pick_device(device: str = "auto") -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is present, else ``cpu``; validate the rest.

    Raises:
        ValueError: for a name other than auto, cpu, cuda or cuda:N.
        RuntimeError: when cuda is asked for and none is available.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was asked for but torch sees no CUDA device; "
            "use device='cpu' or 'auto'"
        )
    return device


def autocast_dtype(device: str) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: bf16 on a GPU that supports it, else None (fp32).

    A GPU without bf16 (Colab's T4) trains in fp32: fp16 autocast would need a gradient scaler.
    Record the choice (``str(dtype)``) with the results.
    """
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (code outside the book may use the legacy API)
    torch.manual_seed(seed)


def stream(seed: int, purpose: str) -> torch.Generator:
    """A torch generator for one purpose ("data", "init", "noise", ...).

    Separate streams keep, say, the data identical when the model changes. The key is hashed
    with SHA-256 rather than ``hash()``, which Python salts per process.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def numpy_stream(seed: int, purpose: str) -> np.random.Generator:
    """The NumPy counterpart of :func:`stream`."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pin_threads(threads: int | None = None) -> int:
    """Pin torch's intra-op CPU threads (default: the cores this process may use, at most 8)."""
    if threads is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        threads = min(available, 8)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def resolve(
    chapter: str,
    presets: Mapping[str, Mapping[str, Any]],
    preset: str,
    *,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    cpu_only: bool = False,
    **overrides: Any,
) -> RunConfig:
    """Validate a chapter's parameters, set up the process, and return its :class:`RunConfig`.

    Args:
        chapter: the chapter's slug, recorded in results files.
        presets: ``{preset name: {setting: value}}``; every preset has the same settings.
        preset: one of ``presets``' keys (normally smoke, book, full).
        seed: seed of every random generator.
        device: auto, cpu, cuda or cuda:N.
        threads: CPU threads for torch; ``None`` uses the available cores (at most 8).
        cpu_only: the chapter runs on the CPU whatever the machine (NumPy, or models too small
            for a GPU to help): ``auto`` means ``cpu``, and a CUDA device is refused rather than
            recorded and ignored.
        **overrides: settings to change; ``None`` keeps the preset's value.

    Raises:
        ValueError: unknown preset, setting or device, with the valid choices in the message.
        TypeError: an override whose type does not match the preset's value.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    values = dict(presets[preset])
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(map(repr, unknown))} for chapter "
            f"{chapter!r}; valid settings: {', '.join(sorted(values))}"
        )
    changed = {}
    for name, value in overrides.items():
        if value is not None:
            _check_type(name, value, values[name])
            values[name] = changed[name] = value
    if cpu_only and device not in ("auto", "cpu"):
        raise ValueError(
            f"chapter {chapter!r} runs on the CPU only (its models are too small for a GPU to "
            f"help); device must be 'auto' or 'cpu', got {device!r}"
        )
    resolved_device = "cpu" if cpu_only else pick_device(device)
    pin_threads(threads)
    torch.set_flush_denormal(True)  # denormals slow CPU arithmetic 5-10x in long runs
    seed_everything(seed)
    return RunConfig(
        chapter=chapter,
        preset=preset,
        seed=seed,
        device=resolved_device,
        values=values,
        overrides=changed,
    )
