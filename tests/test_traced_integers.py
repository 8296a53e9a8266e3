"""Tests of noisefit_lib.traced_integers (chapter 17's task generator)."""

import numpy as np
import pytest

from noisefit_lib import traced_integers as ti


def test_clean_document_text():
    doc = ti.make_document((3, 5, 9, 1, 0, 7), "clean", 0.5, True, np.random.default_rng(0))
    assert doc.text == "3+5+9+1+0+7=03;08;17;18;18;25>25#"
    assert not doc.answer_wrong and ti.decode(ti.encode(doc.text)) == doc.text


def test_dynamic_trace_is_consistent_and_static_is_not_recomputed():
    rng = np.random.default_rng(1)
    ops = (9, 9, 9, 9, 9, 9)
    for _ in range(50):
        dyn = ti.make_document(ops, "dynamic", 0.3, True, rng)
        assert dyn.answer == dyn.trace[-1]
        static = ti.make_document(ops, "static", 0.0, True, rng)
        assert static.trace == ti.clean_trace(ops)


def test_dynamic_corrupts_more_answers_than_static():
    rng = np.random.default_rng(2)
    static = ti.effective_rate(ti.dataset(4000, "static", 0.3, 1.0, rng))
    dynamic = ti.effective_rate(ti.dataset(4000, "dynamic", 0.3, 1.0, rng))
    # static: answer wrong iff a digit is resampled to a new value: 1 - (1 - 0.3 * 0.9)^2
    assert static == pytest.approx(1 - (1 - 0.27) ** 2, abs=0.03)
    assert dynamic > static + 0.3


def test_doc_fraction_gates_noise():
    rng = np.random.default_rng(3)
    docs = ti.dataset(2000, "static", 1.0, 0.5, rng)
    assert np.mean([d.noised for d in docs]) == pytest.approx(0.5, abs=0.05)
    assert all(not d.answer_wrong for d in docs if not d.noised)
    with pytest.raises(ValueError):
        ti.dataset(3, "static", 0.1, 1.5, rng)
