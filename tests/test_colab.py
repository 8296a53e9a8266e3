"""A chapter opened on Colab: a fresh environment with torch preinstalled, the chapter alone.

The environment is a new venv that sees the book's installed packages (as Colab's image provides
torch, transformers, ...) but not noisefit_lib; one chapter is copied alone into an empty folder,
its install cell is pointed (NOISEFIT_PIP_SPEC) at a local git URL of this checkout, and the
chapter runs with the smoke preset in a kernel of that venv. The library is installed, torch is
not reinstalled, and the chapter finds its committed full run inside the installed package.
"""

import json
import shutil
import site
import subprocess
import venv

import papermill as pm
import pytest

from conftest import ROOT

CHAPTER = ROOT / "notebooks" / "part2_softmax" / "12_topk_moe_rates.ipynb"


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow
def test_a_chapter_runs_alone_in_a_fresh_environment(tmp_path, monkeypatch):
    env_dir = tmp_path / "colab-env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # "Preinstalled" packages: the book's environment, appended after the venv's own site.
    with open(f"{own_site}/preinstalled.pth", "w") as handle:
        handle.write("\n".join(site.getsitepackages()) + "\n")
    probe = "import importlib.util as u; print(u.find_spec('noisefit_lib') is None)"
    found = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout == "True\n", "the fresh environment must not see noisefit_lib yet"

    kernels = tmp_path / "kernels" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels"))

    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(CHAPTER, folder / CHAPTER.name)
    monkeypatch.setenv("NOISEFIT_PIP_SPEC", f"git+file://{ROOT}@{_commit()}")
    monkeypatch.delenv("NOISEFIT_RUNS_DIR", raising=False)
    out = pm.execute_notebook(
        str(folder / CHAPTER.name),
        str(folder / "out.ipynb"),
        parameters={"preset": "smoke"},
        cwd=str(folder),
        kernel_name="colab",
        progress_bar=False,
    )

    installed = subprocess.run(
        [python, "-m", "pip", "list", "--path", own_site, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    assert "noisefit-lib" in names, names
    assert "torch" not in names, "the install cell reinstalled torch"
    assert list((folder / "runs").rglob("smoke-seed0.json")), "no results file written"
    text = "".join(
        str(output.get("data", {})) + output.get("text", "")
        for cell in out.cells
        for output in cell.get("outputs", [])
    )
    assert "No `full` run of this chapter is committed" not in text
    assert "ran on NVIDIA H200" in text
