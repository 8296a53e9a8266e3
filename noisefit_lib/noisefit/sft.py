"""NoiseFiT on TRL's ``SFTTrainer``: text, chat (``messages``) and prompt-completion datasets.

The official NoiseFiT trainer subclasses TRL's ``SFTTrainer``; so does
:class:`NoiseFiTSFTTrainer`. TRL prepares the data as its users expect (a ``datasets.Dataset``
with a ``text`` field, a ``formatting_func``, ``messages`` through the tokenizer's chat
template, or ``prompt``/``completion`` pairs with completion-only loss), and
:class:`~noisefit_lib.noisefit.trainer.NoiseFiTMixin` trains on the ``labels`` it builds, with
NoiseFiT's passes, hooks, logged loss terms and ``noisefit.json``::

    from trl import SFTConfig
    from noisefit_lib.noisefit.sft import NoiseFiTSFTTrainer
    from noisefit_lib.noisefit.trainer import NoiseFiTConfig

    trainer = NoiseFiTSFTTrainer(
        model=model,
        args=SFTConfig(output_dir="out", max_length=256, bf16=True),
        train_dataset=dataset,  # e.g. {"messages": [...]} rows
        processing_class=tokenizer,
        noisefit=NoiseFiTConfig(method="noisefit"),
    )
    trainer.train()

Needs the optional extra: ``pip install "noisefit-lib[trl]"`` (``trl`` and ``datasets``).

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(TRL).
"""

from __future__ import annotations

from typing import Any

from noisefit_lib.noisefit.config import NoiseFiTConfig
from noisefit_lib.noisefit.trainer import NoiseFiTMixin

try:
    from trl import SFTTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "noisefit_lib.noisefit.sft needs TRL and datasets: pip install 'noisefit-lib[trl]'"
    ) from err


class NoiseFiTSFTTrainer(NoiseFiTMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` training with NoiseFiT (or one of its baselines).

    Everything TRL does before the loss is TRL's: dataset preparation, chat templates,
    completion-only and assistant-only masks, truncation, the collator. The loss is NoiseFiT's,
    computed on the ``labels`` TRL built (``-100`` where no loss is wanted).

    Args:
        *args: passed to ``SFTTrainer`` (``model``, ``args`` an ``SFTConfig``, datasets,
            ``processing_class``, ``peft_config``, ...).
        noisefit: the method's settings (defaults: :class:`NoiseFiTConfig`).
        **kwargs: passed to ``SFTTrainer``.

    Raises:
        ValueError: ``packing`` or ``padding_free`` with a method other than ``sft`` (NoiseFiT
            stacks its clean and noisy passes along the batch, and a packed row holds several
            sequences whose boundaries the stacked passes would not keep), or
            ``neftune_noise_alpha`` set (see :class:`NoiseFiTMixin`).
    """

    def __init__(self, *args: Any, noisefit: NoiseFiTConfig | None = None, **kwargs: Any) -> None:
        nf = noisefit or NoiseFiTConfig()
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        packed = [flag for flag in ("packing", "padding_free") if getattr(train_args, flag, False)]
        if packed and nf.method != "sft":
            raise ValueError(
                f"SFTConfig({packed[0]}=True) is not supported with method {nf.method!r}: "
                "NoiseFiT stacks clean and noisy passes of each batch, one sequence per row; "
                f"set {packed[0]}=False"
            )
        super().__init__(*args, noisefit=nf, **kwargs)


__all__ = ["NoiseFiTSFTTrainer"]
