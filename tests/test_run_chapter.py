import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHAPTER_SCRIPTS, ROOT

spec = importlib.util.spec_from_file_location("run_chapter", ROOT / "tools" / "run_chapter.py")
run_chapter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_chapter)

CHAPTER = CHAPTER_SCRIPTS[0].with_suffix(".ipynb")


def test_unknown_parameter_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as stop:
        run_chapter.main([str(CHAPTER), "-p", "n_seed", "3", "--out", "/nonexistent"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "has no parameter(s) n_seed; its parameters are: preset, seed, device" in err


def test_outputs_are_named_by_chapter_preset_and_overrides():
    one = run_chapter.output_name(Path("07_x.ipynb"), {"preset": "book", "seed": 1})
    two = run_chapter.output_name(Path("07_x.ipynb"), {"preset": "book", "seed": 2})
    assert one != two and one.startswith("07_x-book-") and one.endswith(".ipynb")
    assert run_chapter.output_name(Path("07_x.ipynb"), {"preset": "full"}) == "07_x-full.ipynb"


@pytest.mark.parametrize(
    ("text", "value"), [("3", 3), ("0.5", 0.5), ("true", True), ("[1, 2]", [1, 2]), ("cpu", "cpu")]
)
def test_values_are_typed(text, value):
    assert run_chapter.parse_value(text) == value


def test_papermill_parameter_names_are_read_from_a_papermill_command_line():
    args = ["-p", "seed", "1", "--log-output", "-r", "device", "cuda", "--parameters", "x", "2"]
    assert run_chapter.papermill_parameter_names(args) == ["seed", "device", "x"]
    assert run_chapter.main(["--check-papermill-args", str(CHAPTER), "-p", "seed", "1"]) == 0


def test_gpu_run_refuses_an_unknown_parameter_before_running(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "NOISEFIT_SITE": str(tmp_path / "site"),
        "NOISEFIT_RUNS_DIR": str(tmp_path / "runs"),
    }
    result = subprocess.run(
        ["bash", ROOT / "tools" / "gpu_run.sh", CHAPTER, "-p", "n_seed", "3"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "has no parameter(s) n_seed" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
