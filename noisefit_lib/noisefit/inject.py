"""Find the decoder layers of any HF causal LM and add noise to their outputs with hooks.

The hooks live only inside a context manager, add nothing unless switched on with
:meth:`NoiseInjector.active`, and never fire in ``eval()`` mode or inside ``generate()``.

Explained in: notebooks/part1_noisefit/02_where_to_inject_noise.py and book/noisefit_library.md
(Injection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

NoiseFn = Callable[
    [torch.Tensor, int, "torch.Tensor | None", "torch.Generator | None"],
    tuple[torch.Tensor, torch.Tensor],
]
"""``fn(h, layer_index, token_mask, generator) -> (noisy, scale)``."""

LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, Phi, SmolLM2, ...
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.language_model.layers",  # multimodal wrappers (Gemma3, Llava, ...)
    "transformer.layers",
    "transformer.blocks",  # MPT
    "layers",
)
"""Attribute paths tried, in order, before the generic search."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside its wrappers: DDP, FSDP, DeepSpeed, ``torch.compile`` and PEFT.

    The distributed and compiled containers are stripped by accelerate's
    ``extract_model_from_parallel`` (what ``Trainer`` itself uses), PEFT's by
    ``get_base_model()``; the two alternate until neither applies.
    """
    from accelerate.utils import extract_model_from_parallel

    for _ in range(8):
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model and hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _n_layers_from_config(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the list of decoder blocks of a causal LM, through PEFT and DDP wrappers.

    Tries :data:`LAYER_PATHS` first, then any ``nn.ModuleList`` whose length equals the
    config's number of layers and whose entries share one class.

    Args:
        model: a ``transformers`` causal LM, possibly wrapped by PEFT or DDP.

    Returns:
        The ``nn.ModuleList`` of decoder blocks.

    Raises:
        ValueError: when no such list is found.
    """
    base = unwrap_model(model)
    n_cfg = _n_layers_from_config(base)
    for path in LAYER_PATHS:
        found = _resolve(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            if n_cfg is None or len(found) == n_cfg:
                return found
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            same_class = len({type(m) for m in module}) == 1
            if same_class and (n_cfg is None or len(module) == n_cfg):
                return module
    raise ValueError(
        f"could not find the decoder layers of {type(base).__name__}: tried "
        f"{', '.join(LAYER_PATHS)} and any ModuleList of num_hidden_layers={n_cfg} blocks; "
        "pass the layers explicitly (NoiseInjector(..., module_list=...))"
    )


def _split_output(output: Any) -> tuple[torch.Tensor, tuple[Any, ...] | None]:
    """Hidden states and the rest: transformers 5 layers return a tensor, 4.x a tuple."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], tuple(output[1:])
    raise TypeError(f"unsupported decoder layer output type {type(output).__name__}")


def _join_output(h: torch.Tensor, rest: tuple[Any, ...] | None) -> Any:
    return h if rest is None else (h, *rest)


class _GenerateGuard:
    """Wraps ``generate`` on a model instance so that a counter is raised while it runs."""

    def __init__(self) -> None:
        self.depth = 0
        self._patched: list[nn.Module] = []

    def install(self, models: Sequence[nn.Module]) -> None:
        for m in models:
            if m in self._patched or not callable(getattr(m, "generate", None)):
                continue
            m.__dict__["generate"] = self._wrap(m.generate)
            self._patched.append(m)

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def generate(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1

        return generate

    def remove(self) -> None:
        for m in self._patched:
            m.__dict__.pop("generate", None)
        self._patched.clear()


class NoiseInjector:
    """Context manager adding noise to the outputs of chosen decoder layers.

    Noise is off until :meth:`active` switches it on, and even then it is added only while
    the layer is in training mode (``model.train()``) and not inside ``generate()``.

    Example::

        with NoiseInjector(model, [0, 2], AdaptiveNoise(0.1)) as inj:
            with inj.active(token_mask=batch["attention_mask"]):
                noisy_logits = model(**batch).logits

    Args:
        model: any causal LM (PEFT/DDP wrappers are fine).
        layers: indices of the decoder blocks to perturb.
        noise_fn: ``fn(h, layer, token_mask, generator) -> (noisy, scale)``, e.g.
            :class:`~noisefit_lib.noisefit.noise.AdaptiveNoise`.
        generator: optional generator passed to ``noise_fn``.
        module_list: the decoder blocks, when :func:`find_decoder_layers` cannot find them.
        train_only: add noise only in training mode (default). Calibration probes set False.
        stats_every: record the noise-to-hidden std ratio on every n-th hook call.

    Raises:
        ValueError: when a layer index is out of range.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        noise_fn: NoiseFn,
        *,
        generator: torch.Generator | None = None,
        module_list: nn.ModuleList | None = None,
        train_only: bool = True,
        stats_every: int = 8,
    ) -> None:
        self.model = model
        self.stats_every = max(1, int(stats_every))
        self.blocks = module_list if module_list is not None else find_decoder_layers(model)
        n = len(self.blocks)
        bad = [i for i in layers if not -n <= int(i) < n]
        if bad:
            raise ValueError(f"layer indices {bad} out of range; the model has layers 0..{n - 1}")
        self.layers = sorted({int(i) % n for i in layers})
        self.noise_fn = noise_fn
        self.generator = generator
        self.train_only = train_only
        self.calls = 0
        self._ratio: dict[int, torch.Tensor] = {}
        self._seen: dict[int, int] = {}
        self._enabled = False
        self._rows: slice | None = None
        self._token_mask: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._guard = _GenerateGuard()

    @property
    def enabled(self) -> bool:
        """Whether :meth:`active` is currently switched on."""
        return self._enabled

    def noise_ratios(self) -> dict[int, float]:
        """Std of the last noise added at each layer, divided by that layer's hidden std."""
        return {i: float(r) for i, r in sorted(self._ratio.items())}

    def keep_out_of_checkpointing(self) -> None:
        """Run the noisy blocks without activation checkpointing.

        A checkpointed block is run again during the backward pass. Were its noise hook inside
        the replay, the replay would add noise that differs from the forward's (or none, outside
        :meth:`active`), and the gradient would belong to another network. Transformers'
        ``GradientCheckpointingLayer`` keeps module hooks outside the replay in recent releases;
        exempting the k noisy blocks makes it so in every release, for the memory of k blocks.
        """
        for i in self.layers:
            if getattr(self.blocks[i], "gradient_checkpointing", False):
                self.blocks[i].gradient_checkpointing = False

    def __enter__(self) -> NoiseInjector:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Register the hooks (done by ``with``); idempotent."""
        if self._handles:
            return
        for i in self.layers:
            handle = self.blocks[i].register_forward_hook(self._make_hook(i))
            self._handles.append(handle)
        self._guard.install([self.model, unwrap_model(self.model)])

    def close(self) -> None:
        """Remove every hook and the ``generate`` guard."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._guard.remove()
        self._enabled = False

    @contextlib.contextmanager
    def active(
        self, *, rows: slice | None = None, token_mask: torch.Tensor | None = None
    ) -> Iterator[NoiseInjector]:
        """Switch noise on inside the block.

        Args:
            rows: only these batch rows get noise (a packed batch ``[clean; noisy1; noisy2]``
                uses ``slice(B, None)``).
            token_mask: (rows, T) mask of real tokens for the statistics, matching ``rows``.

        Yields:
            The injector itself.
        """
        previous = (self._enabled, self._rows, self._token_mask)
        self._enabled, self._rows, self._token_mask = True, rows, token_mask
        try:
            yield self
        finally:
            self._enabled, self._rows, self._token_mask = previous

    def _fires(self, module: nn.Module) -> bool:
        if not self._enabled or self._guard.depth > 0:
            return False
        return module.training or not self.train_only

    def _make_hook(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self._fires(module):
                return output
            h, rest = _split_output(output)
            rows = self._rows
            target = h if rows is None else h[rows]
            noisy, _ = self.noise_fn(target, index, self._token_mask, self.generator)
            seen = self._seen.get(index, 0)
            self._seen[index] = seen + 1
            if seen % self.stats_every == 0:  # a cheap sample of the noise size
                with torch.no_grad():
                    delta = (noisy - target).float().std()
                    self._ratio[index] = delta / target.float().std().clamp_min(1e-12)
            self.calls += 1
            if rows is not None:
                start = rows.start or 0
                if rows.stop is not None or rows.step not in (None, 1):
                    raise ValueError("rows must be slice(start, None)")
                noisy = torch.cat((h[:start], noisy), dim=0)
            return _join_output(noisy, rest)

        return hook


class NEFTuneInjector:
    """Context manager adding NEFTune noise to the input embeddings while :meth:`active`.

    Args:
        model: any causal LM with ``get_input_embeddings()``.
        alpha: NEFTune's alpha.
        per_sequence_length: scale by each row's unpadded length (default) or the padded one.
        generator: optional generator for the uniform noise.
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float,
        *,
        per_sequence_length: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.alpha = float(alpha)
        self.per_sequence_length = per_sequence_length
        self.generator = generator
        self.calls = 0
        self._enabled = False
        self._mask: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._guard = _GenerateGuard()

    def __enter__(self) -> NEFTuneInjector:
        from noisefit_lib.noisefit.noise import neftune_noise

        emb = unwrap_model(self.model).get_input_embeddings()

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if not self._enabled or not module.training or self._guard.depth > 0:
                return output
            self.calls += 1
            return neftune_noise(
                output,
                self.alpha,
                attention_mask=self._mask,
                per_sequence_length=self.per_sequence_length,
                generator=self.generator,
            )

        self._handle = emb.register_forward_hook(hook)
        self._guard.install([self.model, unwrap_model(self.model)])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._guard.remove()

    @contextlib.contextmanager
    def active(self, *, attention_mask: torch.Tensor | None = None) -> Iterator[NEFTuneInjector]:
        """Switch NEFTune noise on for the forwards inside the block."""
        previous = (self._enabled, self._mask)
        self._enabled, self._mask = True, attention_mask
        try:
            yield self
        finally:
            self._enabled, self._mask = previous


def set_dropout(model: nn.Module, p: float) -> list[tuple[nn.Module, str, float]]:
    """Set ``attention_dropout`` attributes and ``nn.Dropout.p`` to ``p``; return undo info."""
    undo = []
    for module in unwrap_model(model).modules():
        if isinstance(module, nn.Dropout):
            undo.append((module, "p", module.p))
            module.p = p
        elif isinstance(getattr(module, "attention_dropout", None), float):
            undo.append((module, "attention_dropout", module.attention_dropout))
            module.attention_dropout = p
    return undo
