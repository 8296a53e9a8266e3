"""Write every chapter's hidden install cell from `_config.yml` (`python tools/install_cell.py`).

The cell is what makes a chapter run on Colab or in a bare Jupyter: it installs `noisefit_lib`
from the book's repository at the branch the book's launch buttons open (`repository.url` and
`repository.branch` in `_config.yml`, the one place they are set), so the notebook and the
library it installs come from the same ref. It does nothing where the book's version of the
library is already importable (a clone, CI). pip's output is shown when it fails. The library
declares only lower bounds, so a preinstalled torch is kept. `NOISEFIT_PIP_SPEC` replaces what
is installed (a fork, a local checkout: `git+file:///path/to/clone@<commit>`).

`--check` exits 1, listing the chapters whose cell differs, instead of writing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*/[0-9][0-9]_*.py"))
CELL_START = '# %% tags=["remove-cell"]\n'
TEMPLATE = """# %% tags=["remove-cell"]
# Colab or a bare Jupyter: install the library from the same ref as this notebook; nothing
# happens where this version is importable (a clone, CI). NOISEFIT_PIP_SPEC overrides the source.
import importlib
import os
import subprocess
import sys

NOISEFIT_LIB = "{version}"
SOURCE = "noisefit-lib @ git+{url}@{branch}"
try:
    import noisefit_lib
except ImportError:
    noisefit_lib = None
if noisefit_lib is None or noisefit_lib.__version__ != NOISEFIT_LIB:
    _spec = os.environ.get("NOISEFIT_PIP_SPEC", SOURCE)
    _pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", _spec], capture_output=True, text=True
    )
    if _pip.returncode != 0:
        print(_pip.stdout[-4000:], _pip.stderr[-4000:], sep="\\n")
        raise RuntimeError(f"pip could not install {{_spec}}: its output is above")
    if noisefit_lib is not None:
        raise RuntimeError("noisefit-lib was updated: restart the runtime, then run all cells")
    importlib.invalidate_caches()
    import noisefit_lib
"""


def expected_cell() -> str:
    """The install cell for this checkout's `_config.yml` and library version."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    init = (ROOT / "noisefit_lib" / "__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init).group(1)
    return TEMPLATE.format(version=version, url=config["url"], branch=config["branch"])


def current_cell(text: str) -> tuple[int, int]:
    """Start and end offsets of the chapter's first `remove-cell` cell."""
    start = text.index(CELL_START)
    end = text.index("\n# %%", start + len(CELL_START)) + 1
    return start, end


def main(argv: list[str]) -> int:
    cell = expected_cell() + "\n"
    stale = []
    for chapter in CHAPTERS:
        text = chapter.read_text()
        start, end = current_cell(text)
        if text[start:end] == cell:
            continue
        stale.append(chapter)
        if "--check" not in argv:
            chapter.write_text(text[:start] + cell + text[end:])
            subprocess.run(
                [sys.executable, "-m", "jupytext", "--sync", "--quiet", str(chapter)], check=True
            )
    for chapter in stale:
        print(("stale: " if "--check" in argv else "updated: ") + str(chapter.relative_to(ROOT)))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
