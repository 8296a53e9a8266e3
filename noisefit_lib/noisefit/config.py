"""The settings of NoiseFiT's trainer: the method, the noise, the layers, the losses' weights.

:class:`NoiseFiTConfig` is plain data (no ``transformers`` import), validated on creation;
:class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer` reads it. :data:`METHODS` names what the
trainer can run.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(The Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from noisefit_lib.noisefit import ablations
from noisefit_lib.noisefit.layers import METHODS as SELECTIONS
from noisefit_lib.noisefit.layers import SNR_FORMATS
from noisefit_lib.noisefit.noise import REFERENCES, AdaptiveNoise

METHODS: tuple[str, ...] = ("sft", "noisefit", "neftune", "rdrop", *ablations.ABLATION_MODES[:-1])
"""``noisefit`` is v1's hybrid loss (v2's ``full``); the others are baselines and ablations."""


@dataclass
class NoiseFiTConfig:
    """Settings of :class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer` (v1 CLI defaults).

    Attributes:
        method: one of :data:`METHODS`.
        faithful: reproduce the official code (v1 for ``noisefit``, v2 for the ablations):
            undetached teacher, T on the teacher only, unshifted masks, sigma applied twice,
            padding in the statistics, three sequential passes with gradient.
        noise_std: sigma.
        noise_reference: ``"mad"`` (default), ``"global_std"`` or ``"v1"``; see
            :func:`~noisefit_lib.noisefit.noise.base_std_for`. Faithful forces ``"v1"``.
        layer_selection: one of ``layers.METHODS``.
        snr_format: ``"Largest"`` or ``"Lowest"``.
        num_noise_layers: k.
        layers: explicit layer indices (skips selection).
        hybrid_loss_alpha: alpha.
        lambda_consistency: lambda.
        temperature: T.
        neftune_alpha: NEFTune alpha.
        neftune_per_sequence_length: NEFTune scale by unpadded length (default) or padded.
        rdrop_alpha: R-Drop KL weight.
        rdrop_dropout: dropout set on attention and ``nn.Dropout`` modules during R-Drop.
        pack: run the passes of one gradient group as one stacked batch (default mode only);
            ``None`` (default): on CUDA yes, on CPU no (compute-bound: stacking gains nothing).
        share_prefix: with stacked passes, run the blocks below the first noisy layer once.
        noisy2_grad: let the soft term's gradient flow through the second noisy pass too
            (v2's exact objective, one more backward). Default False: that pass is forward-only,
            which leaves the loss value and the expected gradient unchanged (the two noisy
            passes are i.i.d.; see :func:`~noisefit_lib.noisefit.losses.hybrid_loss`).
        calibration_batches: batches used by ``layer_selection="auto"``.
        kl_chunk_size: compute the loss terms over checkpointed chunks of this many target
            tokens (v2's chunked KL: bounds the memory of the tokens x vocabulary
            probabilities; same values). Default objective only; ``None``: one chunk.
        seed: noise seed (``args.seed`` when None); noise is reseeded every step, so a
            resumed run draws the same noise as an uninterrupted one.
    """

    method: str = "noisefit"
    faithful: bool = False
    noise_std: float = 0.1
    noise_reference: str = "mad"
    layer_selection: str = "snr"
    snr_format: str = "Largest"
    num_noise_layers: int = 3
    layers: list[int] | None = None
    hybrid_loss_alpha: float = 0.5
    lambda_consistency: float = 0.1
    temperature: float = 1.0
    neftune_alpha: float = 5.0
    neftune_per_sequence_length: bool = True
    rdrop_alpha: float = 1.0
    rdrop_dropout: float = 0.05
    pack: bool | None = None
    noisy2_grad: bool = False
    share_prefix: bool = False
    calibration_batches: int = 2
    kl_chunk_size: int | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            ("method", self.method, METHODS),
            ("layer_selection", self.layer_selection, SELECTIONS),
            ("snr_format", self.snr_format, SNR_FORMATS),
            ("noise_reference", self.noise_reference, REFERENCES),
        ]
        for name, value, valid in checks:
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; choose {', '.join(valid)}")
        if self.num_noise_layers < 1:
            raise ValueError(f"num_noise_layers must be >= 1, got {self.num_noise_layers}")
        if not 0.0 <= self.hybrid_loss_alpha <= 1.0:
            raise ValueError(f"hybrid_loss_alpha must be in [0, 1], got {self.hybrid_loss_alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.kl_chunk_size is not None:
            if self.kl_chunk_size < 1:
                raise ValueError(f"kl_chunk_size must be >= 1, got {self.kl_chunk_size}")
            if self.method != "noisefit" or self.faithful or self.noisy2_grad:
                raise ValueError(
                    "kl_chunk_size applies to the default noisefit objective only (not with "
                    "faithful, noisy2_grad or another method)"
                )

    def refuse_hf_neftune(self, neftune_noise_alpha: float | None) -> None:
        """Raise unless transformers' own NEFTune hook (``TrainingArguments``) is off or harmless.

        Raises:
            ValueError: ``neftune_noise_alpha`` is set while the method is not plain ``sft``:
                the hook would add embedding noise to every pass, the clean teacher included.
        """
        if neftune_noise_alpha is not None and self.method != "sft":
            raise ValueError(
                f"neftune_noise_alpha={neftune_noise_alpha} turns on transformers' NEFTune hook, "
                f"which would add embedding noise to every pass of method {self.method!r}, the "
                "clean teacher included; unset it, and for NEFTune itself use method='neftune' "
                "with neftune_alpha"
            )

    @property
    def uses_layer_noise(self) -> bool:
        """Whether the method perturbs decoder layers."""
        return self.method not in ("sft", "neftune", "rdrop")

    def noise_fn(self, sigmas: dict[int, float] | None = None) -> AdaptiveNoise:
        """The :class:`AdaptiveNoise` this config implies (faithful: v1's training hook)."""
        if self.faithful and self.method == "noisefit":
            return AdaptiveNoise.faithful_v1(self.noise_std)
        if self.faithful:  # v2 ablations: base_std = sigma per layer, detached, padding included
            return AdaptiveNoise(
                self.noise_std, "mad", dict(sigmas or {}), detach=True, mask_padding=False
            )
        return AdaptiveNoise(self.noise_std, self.noise_reference, dict(sigmas or {}))


__all__ = ["METHODS", "NoiseFiTConfig"]
