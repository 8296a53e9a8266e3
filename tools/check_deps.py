"""Check, before a long run, that every package the book needs is importable at a fitting version.

Reads the library's dependencies from ``pyproject.toml`` and adds what running a chapter needs
(papermill, ipykernel, nbclient). Prints one line per missing or mismatched package and exits 1,
or prints "all N dependencies present" and exits 0. Used by ``tools/gpu_run.sh``; runs anywhere:
``python tools/check_deps.py``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TO_RUN_CHAPTERS = ("papermill", "ipykernel", "nbclient", "pyyaml")


def requirements() -> list[Requirement]:
    """The library's dependencies (pyproject.toml) plus what running a chapter needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in (*project["dependencies"], *TO_RUN_CHAPTERS)]


def problems(wanted: list[Requirement]) -> list[str]:
    """One line per requirement that is not installed or whose version does not fit."""
    found = []
    for requirement in wanted:
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(f"missing: {requirement}")
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            found.append(f"wrong version: {requirement.name} {version} (need {requirement})")
    return found


def main() -> int:
    wanted = requirements()
    found = problems(wanted)
    for line in found:
        print(line)
    if found:
        print("install them (see `make gpu-wheels`) before running a chapter", file=sys.stderr)
        return 1
    print(f"all {len(wanted)} dependencies present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
