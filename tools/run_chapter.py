"""Run one chapter as an experiment with papermill: ``make run NB=... ARGS='-p seed 1'``.

Unlike a bare ``papermill`` call, which only warns about a parameter the notebook does not have
(so ``-p n_seed 3``, a typo of ``n_seeds``, silently runs the default), this refuses unknown
parameter names and lists the valid ones. It streams the chapter's output as it runs, and names
the output notebook by chapter, preset and a short hash of the other parameters, so a sweep
never overwrites itself: ``runs/<chapter>-<preset>-<hash>.ipynb``. The chapter itself writes its
results file (``runs/<chapter>/<preset>-seed<seed>[-<hash>].json``) with the overrides recorded.

Usage: python tools/run_chapter.py NOTEBOOK [--preset book] [-p NAME VALUE]... [--out runs]
       python tools/run_chapter.py --check-papermill-args NOTEBOOK [PAPERMILL ARGS]...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import papermill as pm
import yaml


def parse_value(text: str) -> Any:
    """A ``-p`` value as YAML reads it: ``3`` -> 3, ``0.5`` -> 0.5, ``[1, 2]`` -> list, else str."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None and text not in ("null", "None", "~") else value


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Raise ``SystemExit`` (status 2) naming any parameter that the chapter does not declare."""
    declared = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        sys.stderr.write(
            f"error: {notebook.name} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(declared)}\n"
        )
        raise SystemExit(2)


def papermill_parameter_names(args: list[str]) -> list[str]:
    """The names a papermill command line sets: ``-p NAME VALUE``, ``-r NAME VALUE`` and the
    long forms; other papermill options are skipped."""
    flags = ("-p", "--parameters", "-r", "--parameters_raw")
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in flags]


def check_papermill_args(argv: list[str]) -> int:
    """``run_chapter.py --check-papermill-args NOTEBOOK ARGS...``: refuse unknown names (exit 2).

    For scripts that call papermill themselves (``tools/gpu_run.sh``): the same check as a run.
    """
    if not argv or not Path(argv[0]).is_file():
        sys.stderr.write("usage: run_chapter.py --check-papermill-args NOTEBOOK [ARGS...]\n")
        return 2
    check_parameters(Path(argv[0]), dict.fromkeys(papermill_parameter_names(argv[1:])))
    return 0


def output_name(notebook: Path, parameters: dict[str, Any]) -> str:
    """``<chapter>-<preset>[-<hash of the other parameters>].ipynb``."""
    others = {k: v for k, v in parameters.items() if k != "preset"}
    name = f"{notebook.stem}-{parameters['preset']}"
    if others:
        text = json.dumps(others, sort_keys=True, default=str)
        name += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name + ".ipynb"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--check-papermill-args"]:
        return check_papermill_args(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path, help="a chapter's .ipynb")
    parser.add_argument("--preset", default="book", help="smoke, book (default) or full")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter of the chapter (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder of the output")
    args = parser.parse_args(argv)
    notebook = args.notebook.with_suffix(".ipynb")
    if not notebook.is_file():
        parser.error(f"no notebook at {notebook}")
    parameters = {"preset": args.preset}
    parameters.update({name: parse_value(value) for name, value in args.parameter})
    check_parameters(notebook, parameters)
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / output_name(notebook, parameters)
    print(f"running {notebook} with {parameters} -> {output}", flush=True)
    pm.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        cwd=str(notebook.parent),
        kernel_name="python3",
        progress_bar=False,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
    )
    print(f"done: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
