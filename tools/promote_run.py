"""Promote a run's results file into the committed results that the chapters show.

``python tools/promote_run.py runs/<chapter>/full-seed0.json`` copies the file to
``noisefit_lib/results/<chapter>_<preset>.json`` (atomically) after checking that it is a
complete results file and that it names the commit of its code. A file whose commit is unknown
or ``-dirty`` (the code had uncommitted changes) is refused unless ``--allow-dirty`` is given,
because the committed result could then not be traced to code. ``--as NAME`` stores it under
another preset name (e.g. ``real``). Then re-execute the chapter (``make execute NB=...``) and
commit both.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from noisefit_lib import records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results file written by a chapter run")
    parser.add_argument("--as", dest="preset", help="store under this preset name")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="accept a run of uncommitted code"
    )
    args = parser.parse_args(argv)
    try:
        record = records.read(args.results)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {args.results} is not a complete results file: {error}", file=sys.stderr)
        return 2
    commit = record.git_commit
    if (
        commit is None or commit == "unknown" or commit.endswith("-dirty")
    ) and not args.allow_dirty:
        print(
            f"error: {args.results} ran at commit {commit!r}: commit the code and rerun, or pass "
            "--allow-dirty (the note must then say so)",
            file=sys.stderr,
        )
        return 2
    target = records.committed_path(
        record.config["chapter"], args.preset or record.config["preset"]
    )
    records.atomic_write_text(target, args.results.read_text(encoding="utf-8"))
    print(f"{args.results} -> {os.path.relpath(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
