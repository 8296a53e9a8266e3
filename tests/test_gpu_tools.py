import importlib.util
import json
import subprocess

import pytest

from conftest import ROOT
from noisefit_lib import records, runtime


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_run_without_arguments_prints_its_usage():
    result = subprocess.run(["bash", ROOT / "tools" / "gpu_run.sh"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage: tools/gpu_run.sh")


def test_check_deps_finds_everything_here_and_reports_what_is_missing():
    check_deps = _load("check_deps")
    assert check_deps.problems(check_deps.requirements()) == []
    from packaging.requirements import Requirement

    assert check_deps.problems([Requirement("no-such-package-xyz>=1")]) == [
        "missing: no-such-package-xyz>=1"
    ]
    assert check_deps.problems([Requirement("numpy<1")])[0].startswith("wrong version: numpy")


@pytest.fixture
def run_file(tmp_path):
    cfg = runtime.resolve("demo", {"full": {"n": 1}}, "full", device="cpu")

    def make(commit):
        path = records.write(tmp_path / "full-seed0.json", {"a": 1}, cfg)
        data = json.loads(path.read_text())
        data["git_commit"] = commit
        path.write_text(json.dumps(data))
        return path

    return make


def test_promote_refuses_a_dirty_run_and_copies_a_clean_one(
    run_file, tmp_path, monkeypatch, capsys
):
    promote = _load("promote_run")
    monkeypatch.setattr(records, "RESULTS_DIR", tmp_path / "committed")
    assert promote.main([str(run_file("abc123-dirty"))]) == 2
    assert "ran at commit 'abc123-dirty'" in capsys.readouterr().err
    assert not (tmp_path / "committed").exists()
    assert promote.main([str(run_file("abc123-dirty")), "--allow-dirty", "--as", "long"]) == 0
    assert records.read(tmp_path / "committed" / "demo_long.json").results == {"a": 1}
    assert promote.main([str(run_file("abc123"))]) == 0
    assert records.committed("demo").git_commit == "abc123"
