"""A ``transformers.Trainer`` that trains with NoiseFiT, its ablations, NEFTune, R-Drop or SFT.

Its settings, :class:`~noisefit_lib.noisefit.config.NoiseFiTConfig`, live in
:mod:`noisefit_lib.noisefit.config` (importable without ``transformers``); this module exposes
them too, so ``from noisefit_lib.noisefit.trainer import NoiseFiTConfig, NoiseFiTTrainer`` works.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(The Trainer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from noisefit_lib.noisefit import ablations
from noisefit_lib.noisefit import losses as L
from noisefit_lib.noisefit.config import NoiseFiTConfig
from noisefit_lib.noisefit.inject import (
    NEFTuneInjector,
    NoiseInjector,
    find_decoder_layers,
    set_dropout,
)
from noisefit_lib.noisefit.layers import LayerChoice, choose_layers
from noisefit_lib.noisefit.packing import repeat_batch, shared_prefix

STATE_FILE = "noisefit.json"


def _seed_of(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class NoiseFiTMixin:
    """NoiseFiT for any ``transformers.Trainer`` subclass: put it first among the bases.

    ``class MyTrainer(NoiseFiTMixin, Trainer)`` is :class:`NoiseFiTTrainer`;
    ``noisefit_lib.noisefit.sft.NoiseFiTSFTTrainer`` mixes it into TRL's ``SFTTrainer``. It
    replaces ``compute_loss`` (the method's loss on the batch's ``labels``), installs the noise
    hooks around ``train``, adds the loss terms to ``log`` and writes ``noisefit.json`` wherever
    the model is saved (``save_model``, which checkpoints call too).

    Each loss term is averaged over the logging window and logged as ``nf_<term>``, with the
    noise-to-hidden std ratio of each noisy layer as ``nf_ratio_<layer>``. The chosen layers and
    settings are saved as ``noisefit.json`` next to every checkpoint and reused on resume.

    Args:
        *args: passed to the trainer.
        noisefit: the method's settings (defaults: :class:`NoiseFiTConfig`).
        **kwargs: passed to the trainer.

    Raises:
        ValueError: ``args.neftune_noise_alpha`` is set while the method is not plain ``sft``
            (transformers' own NEFTune hook would then perturb every pass, the clean teacher
            included: use ``NoiseFiTConfig(method="neftune", neftune_alpha=...)`` instead).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, *args: Any, noisefit: NoiseFiTConfig | None = None, **kwargs: Any) -> None:
        nf = noisefit or NoiseFiTConfig()
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        nf.refuse_hf_neftune(getattr(train_args, "neftune_noise_alpha", None))
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # library code does not print; logs are in state
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.args.world_size == 1:
            warnings.warn(
                f"launched with WORLD_SIZE={launched} but TrainingArguments sees one process, so "
                "each process would train alone; on a CPU-only machine pass use_cpu=True",
                stacklevel=2,
            )
        self.nf = nf
        self.choice: LayerChoice | None = None
        self._injector: NoiseInjector | None = None
        self._neftune: NEFTuneInjector | None = None
        self._undo_dropout: list[tuple[nn.Module, str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._micro = (-1, 0)

    # ---- set-up -------------------------------------------------------------------------
    def _first_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n`` batches in dataset order (the sampler's RNG is left untouched)."""
        bs = self.args.per_device_train_batch_size
        data = self.train_dataset
        if type(data).__name__ == "Dataset" and hasattr(data, "column_names"):  # HF datasets
            data = self._remove_unused_columns(data, description="noisefit")
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):  # iterable
            it = iter(self.get_train_dataloader())
            return [next(it) for _ in range(n)]
        out = []
        for b in range(n):
            items = [data[i] for i in range(b * bs, min((b + 1) * bs, len(data)))]
            if items:
                out.append(self.data_collator(items))
        return out

    def select_layers(self) -> LayerChoice:
        """Choose the noisy layers (process 0 decides; the choice is broadcast)."""
        cfg = self.nf
        if cfg.layers is not None:
            return LayerChoice(sorted(int(i) for i in cfg.layers))
        batches = self._first_batches(max(1, cfg.calibration_batches))
        gen = torch.Generator().manual_seed(_seed_of(self._seed(), 0, "select"))
        choice = choose_layers(
            self.model,
            cfg.layer_selection,
            batch=batches[0],
            k=cfg.num_noise_layers,
            snr_format=cfg.snr_format,
            sigma=cfg.noise_std,
            generator=gen,
            faithful=cfg.faithful,
            calibration_batches=batches,
        )
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [asdict(choice)]
            broadcast_object_list(box, from_process=0)
            choice = LayerChoice(**box[0])
        return choice

    @property
    def packing(self) -> bool:
        """Whether passes are stacked into one batch (``pack``, or auto: on CUDA)."""
        if self.nf.pack is not None:
            return self.nf.pack
        return self.args.device.type == "cuda"

    def _seed(self) -> int:
        return self.nf.seed if self.nf.seed is not None else self.args.seed

    def _load_choice(self, checkpoint: str | None) -> LayerChoice | None:
        if not checkpoint:
            return None
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())["choice"]
        state["sigmas"] = {int(k): v for k, v in state.get("sigmas", {}).items()}
        return LayerChoice(**state)

    def setup_noise(self, resume_from_checkpoint: str | None = None) -> None:
        """Select layers (or reload them from a checkpoint) and install the hooks."""
        self.teardown_noise()
        cfg = self.nf
        device = self.args.device
        gen = torch.Generator(device=device)
        if cfg.uses_layer_noise:
            self.choice = self._load_choice(resume_from_checkpoint) or self.select_layers()
            self._injector = NoiseInjector(
                self.model, self.choice.layers, cfg.noise_fn(self.choice.sigmas), generator=gen
            )
            self._injector.open()
        elif cfg.method == "neftune":
            self._neftune = NEFTuneInjector(
                self.model,
                cfg.neftune_alpha,
                per_sequence_length=cfg.neftune_per_sequence_length,
                generator=gen,
            ).__enter__()
        elif cfg.method == "rdrop" and cfg.rdrop_dropout > 0:
            self._undo_dropout = set_dropout(self.model, cfg.rdrop_dropout)

    def teardown_noise(self) -> None:
        """Remove hooks and restore dropout (called after ``train``)."""
        if self._injector is not None:
            self._injector.close()
            self._injector = None
        if self._neftune is not None:
            self._neftune.__exit__(None, None, None)
            self._neftune = None
        for module, name, value in self._undo_dropout:
            setattr(module, name, value)
        self._undo_dropout = []

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train`` with NoiseFiT's hooks installed for its duration."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir)
        self.setup_noise(ckpt if isinstance(ckpt, str) else None)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.teardown_noise()

    # ---- loss ---------------------------------------------------------------------------
    def _reseed(self) -> None:
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        seed = _seed_of(self._seed(), self.args.process_index, step, micro)
        for inj in (self._injector, self._neftune):
            if inj is not None and inj.generator is not None:
                inj.generator.manual_seed(seed)

    def _logits(
        self, model: nn.Module, x: dict[str, Any], copies: int, noisy_from: int
    ) -> list[torch.Tensor]:
        """One forward of ``copies`` stacked copies; rows from copy ``noisy_from`` get noise."""
        b = x["input_ids"].shape[0]
        mask = x.get("attention_mask")
        inj = self._injector
        n_noisy = copies - noisy_from
        tmask = None if mask is None or n_noisy == 0 else mask.repeat(n_noisy, 1)
        rows = slice(noisy_from * b, None) if noisy_from > 0 else None
        prefix = self.nf.share_prefix and copies > 1 and inj is not None
        xin = x if prefix else repeat_batch(x, copies)
        noisy = n_noisy > 0 and inj is not None
        with inj.active(rows=rows, token_mask=tmask) if noisy else contextlib.nullcontext():
            if prefix:
                with shared_prefix(find_decoder_layers(model), inj.layers[0], copies):
                    z = model(**xin).logits
            else:
                z = model(**xin).logits
        return list(z.split(b, dim=0))

    def _terms(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[L.LossTerms, Any]:
        cfg = self.nf
        labels = inputs["labels"]
        x = {k: v for k, v in inputs.items() if k != "labels"}
        m = cfg.method
        if m == "sft":
            out = model(**x)
            return L.cross_entropy_only(out.logits, labels), out
        if m == "neftune":
            with self._neftune.active(attention_mask=x.get("attention_mask")):
                out = model(**x)
            return L.cross_entropy_only(out.logits, labels), out
        if m == "rdrop":
            z1, z2 = (
                self._logits(model, x, 2, 2)
                if self.packing
                else (model(**x).logits, model(**x).logits)
            )
            return L.rdrop_loss(
                z1, z2, labels, alpha=cfg.rdrop_alpha, temperature=cfg.temperature
            ), z1
        if cfg.faithful:
            return self._faithful_terms(model, inputs)
        mode = "full" if m == "noisefit" else m
        kw = {
            "alpha": cfg.hybrid_loss_alpha,
            "lam": cfg.lambda_consistency,
            "temperature": cfg.temperature,
        }
        needs = {
            "clean": mode in ("ce_kl", "kl_only", "full"),
            "noisy1": True,
            "noisy2": mode in ("full", "consistency_only"),
        }
        grad = {
            "clean": mode in ("ce_kl", "full") and cfg.hybrid_loss_alpha > 0,
            "noisy1": True,
            "noisy2": mode == "full" and cfg.noisy2_grad,
        }
        z: dict[str, torch.Tensor] = {}
        for with_grad in (True, False):  # one stacked forward per group
            kinds = [k for k in ("clean", "noisy1", "noisy2") if needs[k] and grad[k] == with_grad]
            z.update(self._run(model, x, kinds, with_grad))
        terms = ablations.ablation_loss(
            mode,
            labels,
            **{k: z.get(k) for k in needs},
            second_student=cfg.noisy2_grad,
            kl_chunk_size=cfg.kl_chunk_size,
            **kw,
        )
        return terms, z.get("clean", z["noisy1"])

    def _run(
        self, model: nn.Module, x: dict[str, Any], kinds: list[str], grad: bool
    ) -> dict[str, torch.Tensor]:
        """Logits of the passes ``kinds`` (``clean`` first), stacked or one after another."""
        if not kinds:
            return {}
        n_clean = kinds.count("clean")
        with torch.set_grad_enabled(grad):
            if self.packing:
                return dict(zip(kinds, self._logits(model, x, len(kinds), n_clean), strict=True))
            return {k: self._logits(model, x, 1, int(k == "clean"))[0] for k in kinds}

    def _faithful_terms(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[L.LossTerms, Any]:
        """The official code path: sequential passes, all with gradient, labels to the model."""
        cfg = self.nf
        labels = inputs["labels"]
        inj = self._injector
        m = "full" if cfg.method == "noisefit" else cfg.method
        kw = {
            "alpha": cfg.hybrid_loss_alpha,
            "lam": cfg.lambda_consistency,
            "temperature": cfg.temperature,
        }
        clean = ce = None
        if m in ("full", "ce_kl", "kl_only"):
            out = model(**inputs)
            clean, ce = out.logits, out.loss
        with inj.active():
            n1 = model(**inputs).logits
            n2 = model(**inputs).logits if m in ("full", "consistency_only") else None
        if m == "full":
            return L.hybrid_loss(ce, clean, n1, n2, labels, convention=L.V1, **kw), clean
        terms = ablations.ablation_loss(
            m, labels, ce=ce, clean=clean, noisy1=n1, noisy2=n2, faithful=True, **kw
        )
        return terms, n1

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The method's loss; in eval mode always the plain clean CE (one pass, no noise)."""
        if not model.training:
            out = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = L.causal_ce(out.logits, inputs["labels"])
            return (loss, out) if return_outputs else loss
        self._reseed()
        if self._injector is not None:  # the Trainer turns checkpointing on after setup_noise
            self._injector.keep_out_of_checkpointing()
        terms, out = self._terms(model, inputs)
        self._accumulate(terms)
        if return_outputs:
            return terms.total, ({"logits": out} if isinstance(out, torch.Tensor) else out)
        return terms.total

    # ---- logging and saving -------------------------------------------------------------
    def _accumulate(self, terms: L.LossTerms) -> None:
        for name in ("ce", "soft", "consistency", "noisy_ce", "rdrop_kl", "total"):
            value = getattr(terms, name).detach().float()
            self._sums[name] = self._sums.get(name, 0) + value
        self._count += 1

    def loss_terms(self) -> dict[str, float]:
        """Mean of each loss term since the last log, averaged over processes (as ``loss`` is)."""
        if not self._count:
            return {}
        names = list(self._sums)
        means = torch.stack([torch.as_tensor(self._sums[k]) for k in names]) / self._count
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
        return {f"nf_{k}": round(float(v), 6) for k, v in zip(names, means.tolist(), strict=True)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss terms and noise ratios to the training logs."""
        if "loss" in logs and self._count:
            logs = {**logs, **self.loss_terms()}
            if self._injector is not None:
                logs.update(
                    {f"nf_ratio_{i}": round(r, 6) for i, r in self._injector.noise_ratios().items()}
                )
            self._sums, self._count = {}, 0
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``save_model``, plus ``noisefit.json`` (settings and chosen layers) in the folder.

        Checkpoints go through here too, so every ``checkpoint-*`` folder has the file that
        ``train(resume_from_checkpoint=...)`` reads back. Only the main process writes it.
        """
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        out = output_dir or self.args.output_dir
        os.makedirs(out, exist_ok=True)
        payload = {
            "config": asdict(self.nf),
            "choice": asdict(self.choice) if self.choice else None,
        }
        tmp = os.path.join(out, STATE_FILE + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
        os.replace(tmp, os.path.join(out, STATE_FILE))


class NoiseFiTTrainer(NoiseFiTMixin, Trainer):
    """``Trainer`` running one of :data:`METHODS` (works with PEFT models and ``accelerate``).

    See :class:`NoiseFiTMixin` for what it adds; TRL users take
    ``noisefit_lib.noisefit.sft.NoiseFiTSFTTrainer``, the same mixin on ``SFTTrainer``.
    """
