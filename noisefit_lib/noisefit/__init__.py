"""NoiseFiT: adaptive hidden-state noise for fine-tuning causal LMs, with its baselines.

Modules (import them, not names; only ``trainer`` and ``cli`` import ``transformers``):

- ``noise``: the adaptive noise (pure functions) and NEFTune's embedding noise;
- ``inject``: finding decoder layers and the noise-injecting context managers;
- ``packing``: clean and noisy passes in one batch, optionally sharing the prefix;
- ``layers`` and ``calibrate``: which layers get noise (v1 SNR and variants, v2 auto);
- ``losses``: hybrid loss, v2 ablations, R-Drop;
- ``trainer``: ``NoiseFiTTrainer`` and ``NoiseFiTConfig``;
- ``data``, ``cli``: CSV data and ``python -m noisefit_lib.noisefit train|predict``;
- ``tiny``: tiny models of each supported architecture, built from configs.

Usage page: book/noisefit_library.md.
"""
