"""Shared paths for the test suite."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_SCRIPTS = sorted(p for p in (ROOT / "notebooks").glob("*/[0-9][0-9]_*.py"))
