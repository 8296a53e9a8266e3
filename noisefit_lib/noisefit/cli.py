"""Command line: ``noisefit train|predict`` (also ``python -m noisefit_lib.noisefit``).

Every option is declared once, in a dataclass, and parsed by transformers' ``HfArgumentParser``:
``train`` takes :class:`TrainScriptArguments`, NoiseFiT's own settings (the fields of
:class:`~noisefit_lib.noisefit.config.NoiseFiTConfig`, help taken from its docstring) and every
``TrainingArguments`` flag (:class:`NoiseFiTTrainingArguments`: ``--bf16``, ``--warmup_steps``,
``--eval_strategy``, ``--report_to tensorboard``, ``--push_to_hub``, ...); ``predict`` takes
:class:`PredictArguments`. ``--config run.yaml`` reads any of these options from a YAML file
and ``--profile paper`` sets the official run's values; the precedence is dataclass default,
then profile, then YAML file, then the command line.

Bad input (missing file or column, empty CSV, unknown method, a model path that does not
exist, an option this machine cannot run) ends with one ``error: ...`` line on stderr and exit
status 2, never a traceback.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import os
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser, TrainingArguments

from noisefit_lib.noisefit.config import METHODS, NoiseFiTConfig
from noisefit_lib.noisefit.data import TEMPLATES
from noisefit_lib.noisefit.generation import PAPER_REPETITION_PENALTY
from noisefit_lib.noisefit.layers import METHODS as SELECTIONS
from noisefit_lib.noisefit.layers import SNR_FORMATS
from noisefit_lib.noisefit.loading import (
    DTYPES,
    UserError,
    check_precision,
    inference_placement,
    load_model_and_tokenizer,
    resolve_model,
)
from noisefit_lib.noisefit.noise import REFERENCES

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "train": {
        "default": {},
        # The official v1 run (its train script and TRL 0.15.2's SFTTrainer defaults). Its
        # hardware-bound settings, 4-bit NF4 weights, fp16 and paged AdamW, are not set here:
        # add --load_in_4bit --fp16 --optim paged_adamw_32bit on a CUDA machine.
        "paper": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 4,
            "max_steps": 1000,
            "learning_rate": 5e-5,
            "lr_scheduler_type": "cosine",
            "max_grad_norm": 1.0,
            "save_strategy": "epoch",
            "max_length": 1024,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "lora_target_modules": "q_proj,v_proj",
        },
    },
    "predict": {
        "default": {},
        # The paper's evaluation: five sampled answers per question.
        "paper": {
            "do_sample": True,
            "num_samples": 5,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "repetition_penalty": PAPER_REPETITION_PENALTY,
            "max_new_tokens": 50,
        },
    },
}
"""``--profile`` values per command: option name -> value, applied over the dataclass defaults."""


def _config_field() -> Any:
    return field(
        default=None, metadata={"help": "YAML file of options (command-line flags override it)"}
    )


def _profile_field() -> Any:
    return field(
        default="default",
        metadata={"choices": ("default", "paper"), "help": "paper: the official run's settings"},
    )


@dataclass
class TrainScriptArguments:
    """What ``train`` needs besides NoiseFiT's settings and ``TrainingArguments``."""

    model: str | None = field(
        default=None, metadata={"help": "hub id, local folder, or a .gguf file (required)"}
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside --model's folder"}
    )
    train_data: str | None = field(
        default=None, metadata={"help": "CSV with columns prompt,response (required)"}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "CSV of held-out pairs; with --eval_strategy, logs their clean CE"},
    )
    template: str = field(default="chatml_v1", metadata={"choices": tuple(TEMPLATES)})
    completion_only: bool = field(default=False, metadata={"help": "no loss on prompt tokens"})
    no_eos: bool = field(
        default=False,
        metadata={
            "help": "do not end training texts with EOS (the model then never learns to stop; "
            "--faithful implies it, as the official code appends none)"
        },
    )
    max_length: int = field(default=256, metadata={"help": "truncate texts to this many tokens"})
    no_lora: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = field(
        default="auto", metadata={"help": "comma list, or auto (q_proj,v_proj where present)"}
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: the base model in 4-bit NF4 (needs CUDA and bitsandbytes)"},
    )
    resume: bool = field(
        default=False, metadata={"help": "resume from the last checkpoint in --output_dir"}
    )
    config: str | None = _config_field()
    profile: str = _profile_field()


@dataclass
class NoiseFiTTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the command line's defaults (v1's, where v1 had the option)."""

    per_device_train_batch_size: int = field(
        default=4, metadata={"aliases": ["--batch_size"], "help": "batch size per device"}
    )
    num_train_epochs: float = field(
        default=5.0, metadata={"aliases": ["--epochs"], "help": "epochs (when max_steps <= 0)"}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    save_strategy: str = field(
        default="no", metadata={"help": "no (save at the end only), steps or epoch"}
    )
    disable_tqdm: bool | None = field(
        default=True, metadata={"help": "no progress bars: each log is printed as one line"}
    )
    remove_unused_columns: bool = False
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "NoiseFiT uses every trainable parameter"}
    )


@dataclass
class PredictArguments:
    """The options of ``predict``."""

    model: str | None = field(
        default=None,
        metadata={"help": "hub id, local folder (model or LoRA adapter), or .gguf (required)"},
    )
    gguf_file: str | None = None
    test_data: str | None = field(
        default=None, metadata={"help": "CSV with a prompt column (required)"}
    )
    output: str | None = field(
        default=None, metadata={"help": "CSV to write: prompt,sample,response (required)"}
    )
    template: str = field(default="chatml_v1", metadata={"choices": tuple(TEMPLATES)})
    max_new_tokens: int = 50
    num_samples: int = 1
    do_sample: bool = field(
        default=False, metadata={"help": "sample (T 0.5, top-p 0.9, top-k 40 in the paper)"}
    )
    temperature: float = 0.5
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": f"1.0: none; the paper's evaluation uses {PAPER_REPETITION_PENALTY}"},
    )
    stop_strings: list[str] | None = field(
        default=None, metadata={"help": "extra texts that end an answer (besides end of turn)"}
    )
    batch_size: int = 8
    seed: int = 42
    device: str = field(
        default="auto", metadata={"help": "auto (cuda when available, else cpu), cpu, cuda:1"}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "choices": tuple(DTYPES),
            "help": "weights' dtype: auto is bfloat16 on a GPU that supports it, else float32",
        },
    )
    config: str | None = _config_field()
    profile: str = _profile_field()


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{name: help}`` from the ``Attributes:`` section of a Google-style class docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    out: dict[str, str] = {}
    for name, text in re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", section, re.M | re.S):
        out[name] = " ".join(text.split())
    return out


def noisefit_options() -> type:
    """A dataclass with :class:`NoiseFiTConfig`'s fields as options (``seed`` is the Trainer's)."""
    hints = typing.get_type_hints(NoiseFiTConfig)
    helps = _attribute_docs(NoiseFiTConfig)
    choices = {
        "method": METHODS,
        "layer_selection": SELECTIONS,
        "snr_format": SNR_FORMATS,
        "noise_reference": REFERENCES,
    }
    specs = []
    for f in dataclasses.fields(NoiseFiTConfig):
        if f.name in ("seed", "extra"):
            continue
        meta: dict[str, Any] = {"help": helps.get(f.name, "").replace("%", "%%")}
        if f.name in choices:
            meta["choices"] = tuple(choices[f.name])
        specs.append((f.name, hints[f.name], field(default=f.default, metadata=meta)))
    return dataclasses.make_dataclass("NoiseFiTOptions", specs)


NoiseFiTOptions = noisefit_options()
TrainScriptArguments._argument_group_name = "model, data and LoRA"  # --help's sections
NoiseFiTOptions._argument_group_name = "NoiseFiT (NoiseFiTConfig)"
NoiseFiTTrainingArguments._argument_group_name = "training (transformers.TrainingArguments)"

COMMANDS = {
    "train": (TrainScriptArguments, NoiseFiTOptions, NoiseFiTTrainingArguments),
    "predict": (PredictArguments,),
}


class _Parser(HfArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def build_parser(command: str) -> HfArgumentParser:
    """The parser of one command (``train`` or ``predict``), built from its dataclasses."""
    return _Parser(COMMANDS[command], prog=f"noisefit {command}")


def _defaults(parser: HfArgumentParser, command: str, argv: Sequence[str]) -> dict[str, Any]:
    """The profile's values, then the YAML file's, checked against the parser's options."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--profile", default="default")
    known, _ = pre.parse_known_args(list(argv))
    profiles = PROFILES[command]
    if known.profile not in profiles:
        raise UserError(f"unknown --profile {known.profile!r}; choose {', '.join(profiles)}")
    values = dict(profiles[known.profile])
    if known.config:
        import yaml

        path = Path(known.config)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a YAML config must map option names to values")
        values.update(loaded)
    names = {  # every spelling of an option (``batch_size`` too) -> its destination
        opt.lstrip("-").replace("-", "_"): a.dest
        for a in parser._actions
        if not isinstance(a, argparse._StoreFalseAction)  # ``no_X`` complements: not keys
        for opt in a.option_strings
    }
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} in {known.config or 'the profile'}; "
            f"`noisefit {command} --help` lists them"
        )
    return {names[k]: v for k, v in values.items()}


def parse(command: str, argv: Sequence[str]) -> tuple[Any, ...]:
    """The command's dataclasses from defaults, ``--profile``, ``--config`` and ``argv``.

    Raises:
        UserError: an unknown profile, a missing or malformed config file, an unknown option in
            it, or a required option missing.
        ValueError: a value that a dataclass refuses (e.g. an unknown ``--method``).
    """
    import torch

    parser = build_parser(command)
    if command == "train":  # a CPU-only machine trains on its CPU, with no pinned memory
        cuda = torch.cuda.is_available()
        parser.set_defaults(use_cpu=not cuda, dataloader_pin_memory=cuda)
    parser.set_defaults(**_defaults(parser, command, argv))
    parsed = parser.parse_args_into_dataclasses(args=list(argv))
    required = {"train": ("model", "train_data"), "predict": ("model", "test_data", "output")}
    missing = [n for n in required[command] if getattr(parsed[0], n) is None]
    if command == "train" and parsed[2].output_dir is None:
        missing.append("output_dir")
    if missing:
        raise UserError(f"missing required option(s): {', '.join('--' + n for n in missing)}")
    return tuple(parsed)


def _quiet(show_progress: bool) -> None:
    """Progress bars off unless asked for (the CLI owns its process, so this is allowed)."""
    if not show_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _lora(model: Any, script: TrainScriptArguments) -> Any:
    from peft import LoraConfig, get_peft_model

    if script.lora_target_modules == "auto":
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = ["q_proj", "v_proj"] if {"q_proj", "v_proj"} <= names else None
    else:
        targets = [t.strip() for t in script.lora_target_modules.split(",") if t.strip()]
    cfg = LoraConfig(
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def cmd_train(
    script: TrainScriptArguments, options: Any, targs: NoiseFiTTrainingArguments
) -> dict[str, Any]:
    """Run ``train``; returns a summary dict."""
    from noisefit_lib.noisefit.data import CausalCollator, read_pairs, tokenize_pairs

    pairs = read_pairs(script.train_data)
    eval_pairs = read_pairs(script.eval_data) if script.eval_data else None
    resolve_model(script.model, script.gguf_file)  # fail fast, before loading anything
    nf = NoiseFiTConfig(**dataclasses.asdict(options))
    nf.refuse_hf_neftune(targs.neftune_noise_alpha)
    check_precision(
        bf16=targs.bf16, fp16=targs.fp16, four_bit=script.load_in_4bit, lora=not script.no_lora
    )
    _quiet(not targs.disable_tqdm)
    from transformers import set_seed

    from noisefit_lib.noisefit.trainer import NoiseFiTTrainer

    set_seed(targs.seed)  # before the LoRA adapters are created: their init must follow --seed
    model, tok = load_model_and_tokenizer(
        script.model, script.gguf_file, four_bit=script.load_in_4bit
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as v1

    def tokenize(rows: list[dict[str, str]]) -> list[dict[str, list[int]]]:
        return tokenize_pairs(
            tok,
            rows,
            template=script.template,
            max_length=script.max_length,
            completion_only=script.completion_only,
            add_eos=not (script.no_eos or nf.faithful),
        )

    if not script.no_lora:
        model = _lora(model, script)
    trainer = NoiseFiTTrainer(
        model=model,
        args=targs,
        train_dataset=tokenize(pairs),
        eval_dataset=tokenize(eval_pairs) if eval_pairs else None,
        data_collator=CausalCollator(tok.pad_token_id),
        noisefit=nf,
    )
    if targs.disable_tqdm:
        from transformers.trainer_callback import PrinterCallback

        trainer.add_callback(PrinterCallback)  # the CLI prints each log line
    trainer.train(resume_from_checkpoint=True if script.resume else None)
    trainer.save_model(targs.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(targs.output_dir)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "output_dir": targs.output_dir,
        "steps": trainer.state.global_step,
        "layers": trainer.choice.layers if trainer.choice else [],
        "last_log": logs[-1] if logs else {},
    }


def cmd_predict(args: PredictArguments) -> dict[str, Any]:
    """Run ``predict``; returns a summary dict."""
    import torch

    from noisefit_lib.noisefit.data import read_pairs
    from noisefit_lib.noisefit.generation import generate_responses

    rows = read_pairs(args.test_data, columns=("prompt",))
    resolve_model(args.model, args.gguf_file)
    device, dtype = inference_placement(args.device, args.dtype)
    _quiet(False)
    model, tok = load_model_and_tokenizer(args.model, args.gguf_file, dtype=dtype)
    model.to(device).eval()
    torch.manual_seed(args.seed)
    out_rows = generate_responses(
        model,
        tok,
        [r["prompt"] for r in rows],
        template=args.template,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop_strings,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "sample", "response"])
        w.writeheader()
        w.writerows(out_rows)
    return {"output": args.output, "rows": len(out_rows), "device": str(device)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


USAGE = (
    "usage: noisefit {train,predict} [options]  (python -m noisefit_lib.noisefit)\n"
    "  train    fine-tune a causal LM on a prompt,response CSV with NoiseFiT or a baseline\n"
    "  predict  generate answers for a CSV of prompts\n"
    "`noisefit train --help` lists every option; --config FILE.yaml and --profile paper work "
    "with both.\n"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE) if argv else sys.stderr.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose train or predict", file=sys.stderr)
        return 2
    try:
        parsed = parse(command, rest)
        summary = cmd_train(*parsed) if command == "train" else cmd_predict(*parsed)
    except (UserError, FileNotFoundError, ValueError) as exc:
        msg = str(exc).strip().splitlines()
        print(f"error: {msg[0] if msg else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # a library failure: still one line, but a different status
        if os.environ.get("NOISEFIT_DEBUG"):
            raise
        print(f"error: {_one_line(exc)} (set NOISEFIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # one summary under `accelerate launch`
        print(json.dumps(summary, default=str))
    return 0
