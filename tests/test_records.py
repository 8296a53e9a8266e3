import json

import pandas as pd
import pytest
import torch

from noisefit_lib import records, runtime

PRESETS = {"smoke": {"n_steps": 2}, "book": {"n_steps": 20}, "full": {"n_steps": 2000}}


def test_write_is_complete_and_atomic(tmp_path):
    cfg = runtime.resolve("demo", PRESETS, "smoke", seed=1, device="cpu")
    table = pd.DataFrame({"method": ["sft", "nf"], "acc": [0.5, 0.25]})
    path = records.write(tmp_path / "sub" / "r.json", {"acc": 0.5, "runs": table}, cfg)
    record = json.loads(path.read_text())
    assert record["results"] == {
        "acc": 0.5,
        "runs": [{"method": "sft", "acc": 0.5}, {"method": "nf", "acc": 0.25}],
    }
    assert record["config"]["preset"] == "smoke" and record["config"]["n_steps"] == 2
    assert record["wall_time_s"] >= 0 and "finished_utc" in record and "git_commit" in record
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_versions_cover_a_fixed_set_of_packages():
    found = records.versions()
    assert found["torch"] == torch.__version__
    for name in ("scipy", "scikit-learn", "accelerate", "tokenizers", "pandas", "noisefit-lib"):
        assert found[name], f"{name} not recorded"
    assert "triton" in found  # recorded as None where it is not installed


def test_read_gives_a_record_with_tables(tmp_path):
    cfg = runtime.resolve("demo", PRESETS, "full", seed=0, device="cpu")
    path = records.write(tmp_path / "demo_full.json", {"runs": [{"seed": 0, "acc": 0.5}]}, cfg)
    record = records.read(path)
    assert record.config["preset"] == "full" and record.results["runs"][0]["acc"] == 0.5
    assert record.table("runs").to_dict(orient="records") == [{"seed": 0, "acc": 0.5}]
    with pytest.raises(KeyError, match="has no results 'nope'; it has \\['runs'\\]"):
        record.table("nope")
    assert record.machine.startswith("CPU (")
    assert "The `full` run in `demo_full.json` ran on CPU" in record.provenance()


def test_save_names_the_file_by_chapter_preset_and_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISEFIT_RUNS_DIR", str(tmp_path))
    cfg = runtime.resolve("demo", PRESETS, "book", seed=3, device="cpu")
    assert records.save(cfg, {"x": 1}) is None  # a cell never displays an absolute path
    path = records.saved_path(cfg)
    assert path == tmp_path / "demo" / "book-seed3.json" and path.is_file()
    assert capsys.readouterr().out == "results written to runs/demo/book-seed3.json\n"


def test_committed_and_status(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RESULTS_DIR", tmp_path)
    assert records.committed("demo") is None
    assert records.status(None, "demo").startswith(
        "No `full` run of this chapter is committed (there is no "
        "`noisefit_lib/results/demo_full.json`)"
    )
    cfg = runtime.resolve("demo", PRESETS, "full", seed=0, device="cpu")
    records.write(tmp_path / "demo_full.json", {"a": 1}, cfg)
    record = records.committed("demo")
    assert record is not None and record.results == {"a": 1}
    assert records.status(record, "demo") == record.provenance()


def test_failed_write_keeps_the_old_file(tmp_path):
    path = records.atomic_write_text(tmp_path / "r.json", "old")
    with pytest.raises(TypeError):
        records.atomic_write_text(path, 123)  # not text: fails while writing
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results file"):
        records.read(tmp_path / "nope.json")


def test_runs_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NOISEFIT_RUNS_DIR", str(tmp_path))
    assert records.runs_dir() == tmp_path
    monkeypatch.delenv("NOISEFIT_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    assert records.runs_dir() == tmp_path / "runs"


def test_git_commit_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("NOISEFIT_GIT_COMMIT", raising=False)
    assert records.git_commit(tmp_path) is None
    monkeypatch.setenv("NOISEFIT_GIT_COMMIT", "abc123")
    assert records.git_commit(tmp_path) == "abc123"


def test_a_first_run_in_a_fresh_checkout_records_its_commit(tmp_path, monkeypatch):
    """The runs folder does not exist yet in a fresh clone; the commit must still be found."""
    import subprocess

    monkeypatch.delenv("NOISEFIT_GIT_COMMIT", raising=False)

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "code")
    cfg = runtime.resolve("demo", PRESETS, "smoke", seed=1, device="cpu")
    path = records.write(tmp_path / "runs" / "demo" / "smoke-seed1.json", {"acc": 0.5}, cfg)
    assert json.loads(path.read_text())["git_commit"] == git("rev-parse", "HEAD")


def test_the_committed_runs_are_readable_records():
    files = sorted(records.RESULTS_DIR.glob("*_*.json"))
    assert files, "no committed results in noisefit_lib/results"
    for path in files:
        if path.name.startswith("bench_"):
            continue  # tools/bench_noisefit.py's own format
        record = records.read(path)
        assert record.config["chapter"] + "_" in path.name, path.name
