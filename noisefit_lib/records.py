"""Results files: one call writes a run's results, one loads a committed run.

Every chapter ends its experiment with ::

    records.save(cfg, {"runs": table, "n_seeds": 3})   # -> runs/<chapter>/<preset>-seed<seed>.json

which writes, atomically, the results (DataFrames become lists of row dicts) with the run's
config, the versions of a fixed set of packages, the hardware, the git commit and the wall time.
A chapter shows a longer run that was committed (a ``full`` run on a GPU, or a named long CPU
run, in ``noisefit_lib/results/``) with ::

    full = records.committed(cfg.chapter, "full")   # a Record, or None if not committed
    report.glue("full_status", records.status(full, cfg.chapter, "full"))

so the prose says what is true when the book is built: which machine produced the file, or that
no such file is committed.

Explained in: book/contributing.md (Results and verdicts) and book/running.md.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from noisefit_lib.runtime import RunConfig

# The packages whose versions every results file records (absent ones are recorded as None).
PACKAGES = (
    "noisefit-lib",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "scipy",
    "scikit-learn",
    "pandas",
    "triton",
)
# Committed longer runs (``full`` on a GPU, named long CPU runs) ship inside the package, so a
# chapter opened on Colab or downloaded alone finds them where the install cell put the library.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current commit, suffixed ``-dirty`` when tracked files changed.

    Outside a git checkout (a copied tree on a GPU machine) it is ``$NOISEFIT_GIT_COMMIT`` if set,
    else ``None``.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("NOISEFIT_GIT_COMMIT")
    return commit + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    """Python's version and those of :data:`PACKAGES` (``None`` when not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware that a result depends on."""
    hardware = {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return {"versions": versions(), "hardware": hardware}


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _plain(value: Any) -> Any:
    """DataFrames as lists of row dicts, recursively; everything else as it is."""
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def runs_dir() -> Path:
    """Where chapters write their results: ``$NOISEFIT_RUNS_DIR``, else ``runs/`` at the repo root.

    The repository root is found by walking up from the working directory to ``pyproject.toml``;
    outside the repository (Colab, a copied notebook) it is ``./runs``.
    """
    if "NOISEFIT_RUNS_DIR" in os.environ:
        return Path(os.environ["NOISEFIT_RUNS_DIR"])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "noisefit_lib").is_dir():
            return folder / "runs"
    return here / "runs"


def write(path: str | Path, results: Mapping[str, Any], cfg: RunConfig) -> Path:
    """Write ``results`` to ``path`` as JSON with the run's config, environment, commit and time.

    Args:
        path: the JSON file to (over)write atomically.
        results: JSON-serialisable values; DataFrames are stored as lists of row dicts.
        cfg: the run's config, from :func:`noisefit_lib.runtime.resolve`.
    """
    folder = Path(path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)  # git must run inside it: a first run creates it
    record = {
        "results": _plain(dict(results)),
        "config": cfg.to_dict(),
        **environment(cfg.device),
        "git_commit": git_commit(folder),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - cfg.started, 3),
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=True) + "\n"
    return atomic_write_text(path, text)


def save(cfg: RunConfig, results: Mapping[str, Any], *, name: str | None = None) -> None:
    """Write a chapter run's results under :func:`runs_dir` and print where (relative).

    The file is ``runs/<chapter>/<name>.json`` with ``name`` defaulting to ``cfg.run_name``
    (``<preset>-seed<seed>``, plus a hash of the overrides if any). It returns nothing, so that a
    chapter's cell never displays an absolute path; :func:`saved_path` gives the path.
    """
    path = saved_path(cfg, name)
    write(path, results, cfg)
    print(f"results written to runs/{cfg.chapter}/{path.name}")


def saved_path(cfg: RunConfig, name: str | None = None) -> Path:
    """Where :func:`save` writes ``cfg``'s results."""
    return runs_dir() / cfg.chapter / f"{name or cfg.run_name}.json"


@dataclass(frozen=True)
class Record:
    """A results file read back: its results and everything recorded about the run."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, Any]
    hardware: dict[str, Any]
    git_commit: str | None
    finished_utc: str
    wall_time_s: float

    def table(self, key: str) -> pd.DataFrame:
        """``results[key]`` (a list of row dicts) as a DataFrame."""
        if key not in self.results:
            raise KeyError(f"{self.path.name} has no results {key!r}; it has {list(self.results)}")
        return pd.DataFrame(self.results[key])

    @property
    def machine(self) -> str:
        """``"NVIDIA H200"`` for a GPU run, else ``"CPU (x86_64, 1 torch thread)"``."""
        if "gpu" in self.hardware:
            return str(self.hardware["gpu"])
        threads = self.hardware.get("torch_threads")
        plural = "" if threads == 1 else "s"
        return f"CPU ({self.hardware.get('machine')}, {threads} torch thread{plural})"

    def provenance(self) -> str:
        """One sentence: which preset ran where, with which torch, at which commit, when."""
        commit = f"commit {self.git_commit[:12]}" if self.git_commit else "an unrecorded commit"
        torch_version = self.versions.get("torch") or "unknown"
        return (
            f"The `{self.config.get('preset')}` run in `{self.path.name}` ran on "
            f"{self.machine} with torch {torch_version} at {commit} "
            f"({self.finished_utc[:10]}, {self.wall_time_s / 60:.0f} min)."
        )


def read(path: str | Path) -> Record:
    """Read a results file written by :func:`write`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Record(
        path=path,
        results=data["results"],
        config=data["config"],
        versions=data["versions"],
        hardware=data["hardware"],
        git_commit=data.get("git_commit"),
        finished_utc=data["finished_utc"],
        wall_time_s=float(data["wall_time_s"]),
    )


def committed_path(chapter: str, preset: str) -> Path:
    """The committed run of ``chapter``: ``noisefit_lib/results/<chapter>_<preset>.json``."""
    return RESULTS_DIR / f"{chapter}_{preset}.json"


def committed(chapter: str, preset: str = "full") -> Record | None:
    """The committed ``preset`` run of ``chapter``, or None when none is committed."""
    path = committed_path(chapter, preset)
    return read(path) if path.is_file() else None


def status(record: Record | None, chapter: str, preset: str = "full") -> str:
    """A sentence for the prose that is true at build time: the run's provenance, or its absence."""
    if record is not None:
        return record.provenance()
    return (
        f"No `{preset}` run of this chapter is committed (there is no "
        f"`noisefit_lib/results/{committed_path(chapter, preset).name}`), so this section shows "
        f"nothing yet; Running the book gives the command that produces it."
    )
