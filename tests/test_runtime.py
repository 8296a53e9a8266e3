import random

import numpy as np
import pytest
import torch

from noisefit_lib import runtime

PRESETS = {
    "smoke": {"n_steps": 2, "lr": 0.1, "name": "a", "sizes": [1, 2]},
    "book": {"n_steps": 20, "lr": 0.01, "name": "b", "sizes": [1, 2, 3]},
    "full": {"n_steps": 2000, "lr": 0.001, "name": "c", "sizes": [1, 2, 3, 4]},
}


def test_resolve_reads_preset_and_applies_overrides():
    cfg = runtime.resolve("demo", PRESETS, "book", seed=3, device="cpu", n_steps=None, lr=1)
    assert (cfg.preset, cfg.seed, cfg.device) == ("book", 3, "cpu")
    assert cfg.n_steps == 20 and cfg.lr == 1 and cfg.sizes == [1, 2, 3]
    assert cfg.to_dict()["lr"] == 1
    assert cfg.summary().splitlines()[0] == "preset=book seed=3 device=cpu"


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'bok'; choose one of: smoke, book, full"):
        runtime.resolve("demo", PRESETS, "bok")


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'n_step'.*valid settings: lr, n"):
        runtime.resolve("demo", PRESETS, "book", n_step=3)


def test_wrong_override_type_is_refused():
    with pytest.raises(TypeError, match="n_steps must be int"):
        runtime.resolve("demo", PRESETS, "book", n_steps="many")
    with pytest.raises(TypeError, match="n_steps must be int"):
        runtime.resolve("demo", PRESETS, "book", n_steps=True)


def test_unknown_attribute_names_the_settings():
    cfg = runtime.resolve("demo", PRESETS, "smoke", device="cpu")
    with pytest.raises(AttributeError, match="settings"):
        _ = cfg.n_stepz


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda0"])
def test_unknown_device(bad):
    with pytest.raises(ValueError, match="choose one of: auto, cpu, cuda"):
        runtime.pick_device(bad)


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        runtime.pick_device("cuda")
    assert runtime.pick_device("auto") == "cpu"


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        runtime.resolve("demo", PRESETS, "book", seed=-1)


def test_resolve_seeds_every_generator():
    runtime.resolve("demo", PRESETS, "smoke", seed=7, device="cpu")
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    runtime.resolve("demo", PRESETS, "smoke", seed=7, device="cpu")
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002


def test_streams_are_reproducible_and_independent():
    a1 = torch.randn(4, generator=runtime.stream(0, "data"))
    a2 = torch.randn(4, generator=runtime.stream(0, "data"))
    b = torch.randn(4, generator=runtime.stream(0, "init"))
    assert torch.equal(a1, a2) and not torch.equal(a1, b)
    assert runtime.numpy_stream(1, "x").random() == runtime.numpy_stream(1, "x").random()


def test_pin_threads():
    before = torch.get_num_threads()
    try:
        assert runtime.pin_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            runtime.pin_threads(0)
    finally:
        torch.set_num_threads(before)


def test_overrides_are_recorded_and_name_the_run():
    plain = runtime.resolve("demo", PRESETS, "book", seed=1, device="cpu", n_steps=None)
    assert plain.overrides == {} and plain.run_name == "book-seed1"
    assert plain.to_dict()["overrides"] == {}
    a = runtime.resolve("demo", PRESETS, "book", seed=1, device="cpu", n_steps=5)
    b = runtime.resolve("demo", PRESETS, "book", seed=1, device="cpu", n_steps=6)
    assert a.overrides == {"n_steps": 5} and a.to_dict()["overrides"] == {"n_steps": 5}
    assert a.run_name.startswith("book-seed1-") and a.run_name != b.run_name


def test_autocast_dtype_is_fp32_on_cpu_and_on_gpus_without_bf16(monkeypatch):
    assert runtime.autocast_dtype("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.autocast_dtype("cuda") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.autocast_dtype("cuda:0") is torch.bfloat16


def test_a_cpu_only_chapter_refuses_cuda_instead_of_ignoring_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even where a GPU exists
    cfg = runtime.resolve("demo", PRESETS, "book", device="auto", cpu_only=True)
    assert cfg.device == "cpu"
    with pytest.raises(ValueError, match=r"runs on the CPU only.*'auto' or 'cpu'"):
        runtime.resolve("demo", PRESETS, "book", device="cuda", cpu_only=True)
