"""Every chapter: paired, parameterised, installable on Colab, and runnable with papermill."""

import re
import subprocess
import sys

import jupytext
import nbformat
import papermill as pm
import pytest
import yaml

import noisefit_lib
from conftest import CHAPTER_SCRIPTS, ROOT

IDS = [p.stem for p in CHAPTER_SCRIPTS]


def _inputs(notebook):
    return [
        (c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in notebook.cells
    ]


def test_there_are_chapters_and_all_are_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    assert CHAPTER_SCRIPTS, "no chapters found under notebooks/<part>/"
    for script in CHAPTER_SCRIPTS:
        assert str(script.relative_to(ROOT).with_suffix("")) in toc, (
            f"{script.name} not in _toc.yml"
        )


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_pair_in_sync(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"run `jupytext --to ipynb {script.relative_to(ROOT)}`"
    from_script = jupytext.read(script)
    stored = nbformat.read(ipynb, as_version=4)
    assert _inputs(from_script) == _inputs(stored), (
        f"{script.name} and its .ipynb differ: run `make sync`, then `make execute NB=...`"
    )


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_one_parameters_cell_with_the_standard_names(script):
    notebook = jupytext.read(script)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    names = re.findall(r"^(\w+)\s*(?::[^=]+)?=", cells[0].source, flags=re.M)
    assert names[:3] == ["preset", "seed", "device"], names
    assert re.search(r'^preset = "book"', cells[0].source, flags=re.M), "book must be the default"


def test_install_cells_come_from_the_config():
    """Every chapter's hidden first cell installs the library from _config.yml's url and branch."""
    result = subprocess.run(
        [sys.executable, "tools/install_cell.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, "run `python tools/install_cell.py`:\n" + result.stdout
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    for script in CHAPTER_SCRIPTS:
        first_code = next(c for c in jupytext.read(script).cells if c.cell_type == "code")
        assert "remove-cell" in first_code.metadata.get("tags", [])
        assert f"git+{config['url']}@{config['branch']}" in first_code.source
        assert f'NOISEFIT_LIB = "{noisefit_lib.__version__}"' in first_code.source


@pytest.mark.slow
@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_smoke_preset_runs_under_papermill(script, tmp_path, monkeypatch):
    monkeypatch.setenv("NOISEFIT_RUNS_DIR", str(tmp_path / "runs"))
    out = pm.execute_notebook(
        str(script.with_suffix(".ipynb")),
        str(tmp_path / "out.ipynb"),
        parameters={"preset": "smoke"},
        cwd=str(script.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    assert out.metadata.papermill.parameters == {"preset": "smoke"}
    assert list((tmp_path / "runs").rglob("smoke-seed0.json")), "no results file written"


@pytest.mark.slow
@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_unknown_preset_fails_with_the_valid_ones(script, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as error:
        pm.execute_notebook(
            str(script.with_suffix(".ipynb")),
            str(tmp_path / "out.ipynb"),
            parameters={"preset": "bogus"},
            cwd=str(script.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    assert "unknown preset 'bogus'; choose one of: smoke, book, full" in str(error.value)
