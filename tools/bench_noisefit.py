"""Step-time cost of each NoiseFiT method relative to plain SFT, measured in one run.

Each method gets its own copy of the same randomly initialised Llama (built from a config, no
download) and its own AdamW. Steps are interleaved (one step of every method, then the next
round) so that load from other processes hits all methods alike; the table reports medians.
A step is ``compute_loss`` + ``backward`` + ``optimizer.step`` of ``NoiseFiTTrainer``, i.e.
everything a training step costs except data loading.

    python tools/bench_noisefit.py --device cpu --size book --steps 20 --out results.json
    python tools/bench_noisefit.py --device cuda --size 100m --steps 30 --out gpu.json

Writes JSON (config, versions, device, per-method times and ratios) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

SIZES = {
    # the book's CPU model: Llama d256, 4 layers, vocab 1000, batch 32 x 32 tokens
    "book": {"hidden": 256, "layers": 4, "heads": 4, "vocab": 1000, "batch": 32, "seq": 32},
    # ~138M parameters (d768, 12 layers, vocab 32000, tied), batch 16 x 256 tokens
    "100m": {"hidden": 768, "layers": 12, "heads": 12, "vocab": 32000, "batch": 16, "seq": 256},
}

METHODS = {
    "sft": {"method": "sft"},
    "noisefit": {"method": "noisefit"},
    "noisefit_packed": {"method": "noisefit", "pack": True},
    "noisefit_sequential": {"method": "noisefit", "pack": False},
    "noisefit_noisy2_grad": {"method": "noisefit", "noisy2_grad": True},
    "noisefit_prefix_deep": {
        "method": "noisefit",
        "pack": True,
        "share_prefix": True,
        "snr_format": "Lowest",
    },
    "noisefit_faithful_v1": {"method": "noisefit", "faithful": True},
    "neftune": {"method": "neftune"},
    "rdrop": {"method": "rdrop"},
}


def build(size: dict, device: str, spec: dict, batch: dict, tmp: str, seed: int):
    from transformers import TrainingArguments

    from noisefit_lib.noisefit import toy_architectures
    from noisefit_lib.noisefit.data import CausalCollator
    from noisefit_lib.noisefit.trainer import NoiseFiTConfig, NoiseFiTTrainer

    model = toy_architectures.toy_model(
        "llama",
        seed=seed,
        hidden=size["hidden"],
        layers=size["layers"],
        heads=size["heads"],
        vocab=size["vocab"],
        max_positions=max(128, size["seq"]),
    )
    args = TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=size["batch"],
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        seed=seed,
        save_strategy="no",
    )
    items = [
        {"input_ids": row[: int(m.sum())].tolist()}
        for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    cfg = NoiseFiTConfig(num_noise_layers=min(3, size["layers"]), **spec)
    tr = NoiseFiTTrainer(
        model=model, args=args, train_dataset=items, data_collator=CausalCollator(0), noisefit=cfg
    )
    tr.setup_noise()
    opt = torch.optim.AdamW([p for p in tr.model.parameters() if p.requires_grad], lr=1e-4)
    return tr, opt


def make_batch(size: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, t, v = size["batch"], size["seq"], size["vocab"]
    ids = torch.randint(4, v, (b, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def step(tr, opt, batch, device: str, amp: str) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    ctx = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if amp == "bf16" and device == "cuda"
        else torch.autocast(device_type="cpu", enabled=False)
    )
    with ctx:
        loss = tr.compute_loss(tr.model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", choices=tuple(SIZES), default="book")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast on cuda")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ",".join(METHODS)
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results.json")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    unknown = [m for m in a.methods.split(",") if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose {', '.join(METHODS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    size = SIZES[a.size]
    methods = a.methods.split(",")
    if "sft" not in methods:
        methods.insert(0, "sft")
    batch_cpu = make_batch(size, a.seed)
    batch = {k: v.to(a.device) for k, v in batch_cpu.items()}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods:
            runs[name] = build(size, a.device, METHODS[name], batch_cpu, tmp, a.seed)
        n_params = sum(p.numel() for p in runs["sft"][0].model.parameters())
        wall = {m: [] for m in methods}
        cpu = {m: [] for m in methods}
        for i in range(a.warmup + a.steps):
            for name in methods:
                w, c = step(*runs[name], batch, a.device, a.amp)
                if i >= a.warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
        peak = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None
    base_w, base_c = statistics.median(wall["sft"]), statistics.median(cpu["sft"])
    rows = {}
    for name in methods:
        tr = runs[name][0]
        rows[name] = {
            "config": METHODS[name],
            "layers": tr.choice.layers if tr.choice else [],
            "median_ms": 1000 * statistics.median(wall[name]),
            "mean_ms": 1000 * statistics.fmean(wall[name]),
            "cpu_median_ms": 1000 * statistics.median(cpu[name]),
            "ratio_vs_sft": statistics.median(wall[name]) / base_w,
            "cpu_ratio_vs_sft": statistics.median(cpu[name]) / base_c,
        }
    import transformers

    device_name = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor()
    result = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "size": a.size,
        "model": {**size, "parameters": n_params},
        "device": a.device,
        "device_name": device_name or platform.machine(),
        "threads": a.threads,
        "amp": a.amp if a.device == "cuda" else "none",
        "steps": a.steps,
        "warmup": a.warmup,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "peak_gib": peak,
        "methods": rows,
    }
    tmp_out = a.out + ".tmp"
    with open(tmp_out, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp_out, a.out)
    print(f"{a.size} on {a.device} ({n_params / 1e6:.1f}M params), median of {a.steps} steps")
    print(f"{'method':<24}{'layers':<14}{'ms':>9}{'x SFT':>8}{'cpu x SFT':>11}")
    for name, r in rows.items():
        layers = ",".join(map(str, r["layers"])) or "-"
        print(
            f"{name:<24}{layers:<14}{r['median_ms']:>9.1f}{r['ratio_vs_sft']:>8.2f}"
            f"{r['cpu_ratio_vs_sft']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
