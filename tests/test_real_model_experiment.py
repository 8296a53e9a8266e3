"""The real-model experiment driver (tools/real_model_experiment.py): its settings and the paired
differences it reports; the run itself takes CPU minutes and is not a test."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from noisefit_lib import geo_facts, geo_scoring, records

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "real_model_experiment", ROOT / "tools" / "real_model_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rme = _load_tool()


@pytest.fixture(scope="module")
def fact_set():
    return geo_facts.build_facts()


def _evaluation(fact_set, outcomes):
    items = fact_set.facts[: len(outcomes)]
    conf = np.linspace(0.2, 0.9, len(outcomes))
    return geo_scoring.RealEvaluation(items, ["x"] * len(items), list(outcomes), conf)


def test_settings_round_trip_through_a_preset():
    settings = rme.RealSettings()
    values = settings.to_dict()
    assert json.loads(json.dumps(values)) == values
    assert rme.RealSettings.from_values(values) == settings
    assert rme.RealSettings.from_values({**values, "steps": 3}).steps == 3


def test_paired_differences(fact_set):
    ev = _evaluation(fact_set, ["correct", "hallucinated", "abstained", "malformed"] * 5)
    better = _evaluation(fact_set, ["correct"] * 20)
    per_seed = {"0": {"a": better, "b": ev}, "1": {"a": better, "b": ev}}
    diff = rme.paired_differences(per_seed, "a", "b")
    assert diff["accuracy"]["per_seed"] == [0.75, 0.75]
    assert diff["accuracy"]["mean"] == 0.75 and diff["accuracy"]["seed_ci"] == 0.0
    assert diff["hallucination"]["mean"] == -0.25
    low, high = diff["accuracy"]["item_ci"]
    assert 0.5 < low <= 0.75 <= high < 1.0
    json.dumps(diff)


def test_default_output_is_the_committed_file_chapter_5_reads():
    path = records.committed_path(rme.CHAPTER, rme.PRESET)
    assert path.name == "noisefit_end_to_end_real.json"
    committed = records.read(path)
    assert set(rme.RESULT_KEYS) <= set(committed.results)
    assert committed.results["settings"] == rme.RealSettings().to_dict()
