"""Book-wide conventions that a chapter can break without failing its own run.

- Every glued verdict belongs to the book's vocabulary (noisefit_lib.verdicts), and no chapter
  defines its own verdict or interval function or uses the retired verdict words.
- Nothing cites a file outside the repository (a spec the reader does not have).
- Chapters are formatted like the library: `ruff format`, and lines of at most 100 characters
  (Markdown pipe-table rows excepted: Markdown cannot wrap them).
"""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from conftest import CHAPTER_SCRIPTS, ROOT
from noisefit_lib import verdicts

IDS = [p.stem for p in CHAPTER_SCRIPTS]
RETIRED_VERDICTS = re.compile(
    r"direction only|not at this scale|not reproduced|partly reproduced|weakly reproduced",
    re.IGNORECASE,
)
INTERVAL_FUNCTION = re.compile(r"interval|bootstrap|(^|_)ci($|_)|t975|wilson", re.IGNORECASE)
OUTSIDE_FILES = re.compile(r"spec §|the team's spec|noisefit-spec|\bspec section\b", re.IGNORECASE)
MAX_LINE = 100


def _glued(ipynb: Path) -> dict[str, str]:
    """The stored glue values of a chapter, by key (their text/plain representation)."""
    glued = {}
    for cell in nbformat.read(ipynb, as_version=4).cells:
        for output in cell.get("outputs", []):
            scrapbook = output.get("metadata", {}).get("scrapbook")
            if scrapbook:
                prefix = scrapbook.get("mime_prefix", "")
                glued[scrapbook["name"]] = output["data"].get(prefix + "text/plain", "")
    return glued


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_glued_verdicts_are_in_the_vocabulary(script):
    glued = _glued(script.with_suffix(".ipynb"))
    bad = {}
    for key, text in glued.items():
        if verdicts.is_verdict_key(key):
            value = ast.literal_eval(text) if text[:1] in "'\"" else text
            if not verdicts.is_verdict(value):
                bad[key] = value
    assert not bad, f"verdicts outside the vocabulary: {bad}"


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_no_chapter_defines_its_own_verdict_or_interval_rule(script):
    """Verdict words come from noisefit_lib.verdicts, intervals from noisefit_lib.stats."""
    notebook = jupytext.read(script)
    tree = ast.parse("\n".join(c.source for c in notebook.cells if c.cell_type == "code"))
    words = {*verdicts.VERDICTS, *verdicts.CHECKS}
    literals = sorted(
        {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and (node.value.strip().lower() in words or RETIRED_VERDICTS.search(node.value))
        }
    )
    assert not literals, f"verdict words written in code (use noisefit_lib.verdicts): {literals}"
    own = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and INTERVAL_FUNCTION.search(node.name)
    ]
    assert not own, f"interval functions (use noisefit_lib.stats): {own}"
    retired = sorted({m.group(0).lower() for m in RETIRED_VERDICTS.finditer(script.read_text())})
    assert not retired, f"retired verdict words (see noisefit_lib.verdicts): {retired}"


def test_nothing_cites_a_file_outside_the_repository():
    places = [
        *CHAPTER_SCRIPTS,
        *(ROOT / "book").glob("*.md"),
        *(ROOT / "noisefit_lib").rglob("*.py"),
    ]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in places
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if OUTSIDE_FILES.search(line)
    ]
    assert not hits, "cite the paper, the official code or a chapter instead:\n" + "\n".join(hits)


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_chapter_lines_fit(script):
    long = [
        f"{script.name}:{number} ({len(line)} chars)"
        for number, line in enumerate(script.read_text().splitlines(), start=1)
        if len(line) > MAX_LINE and not line.lstrip().startswith("# |")
    ]
    assert not long, "wrap these lines (captions go into Markdown with glue:figure): " + ", ".join(
        long
    )


def test_chapters_are_ruff_formatted():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "format", "--check", "--no-cache", "notebooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", CHAPTER_SCRIPTS, ids=IDS)
def test_no_stored_output_names_this_machine(script):
    """Stored outputs show no absolute path: they are read online and compared on other machines."""
    leaks = []
    for number, cell in enumerate(nbformat.read(script.with_suffix(".ipynb"), as_version=4).cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
            if str(ROOT) in text or "site-packages/" in text or "PosixPath(" in text:
                leaks.append(f"cell {number}: {text.strip()[:120]}")
    assert not leaks, "outputs that name this machine's paths:\n" + "\n".join(leaks)
