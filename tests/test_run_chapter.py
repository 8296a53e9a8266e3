import importlib.util
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
