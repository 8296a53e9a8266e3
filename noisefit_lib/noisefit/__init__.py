"""NoiseFiT: adaptive hidden-state noise for fine-tuning causal LMs, with its baselines.

Modules (import them, not names; only ``trainer``, ``sft`` and ``cli`` import ``transformers``
when imported, ``sft`` also ``trl``):

- ``noise``: the adaptive noise (pure functions) and NEFTune's embedding noise;
- ``inject``: finding decoder layers and the noise-injecting context managers;
- ``packing``: clean and noisy passes in one batch, optionally sharing the prefix;
- ``layers`` and ``calibrate``: which layers get noise (v1 SNR and variants, v2 auto);
- ``losses``: hybrid loss, its KL conventions, R-Drop; ``ablations``: v2's loss ablations;
- ``trainer``: ``NoiseFiTTrainer`` and ``NoiseFiTConfig``;
- ``data``, ``cli``, ``loading``, ``generation``: CSV data, the ``noisefit train|predict``
  command line, model loading (GGUF, adapters, 4-bit) and answers that stop at the end of turn;
- ``sft``: ``NoiseFiTSFTTrainer``, NoiseFiT on TRL's ``SFTTrainer`` (the ``[trl]`` extra);
- ``toy_architectures``: toy models of each supported architecture, built from configs.

Explained in: book/noisefit_library.md (the usage page) and chapters 2-6 of Part I
(notebooks/part1_noisefit/02_where_to_inject_noise.py to 06_noisefit_on_your_model.py).
"""
