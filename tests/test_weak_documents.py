"""Tests of noisefit_lib.weak_documents (chapter 22, noise-aware training)."""

import numpy as np
import torch
import torch.nn.functional as F

from noisefit_lib import weak_documents as wd


def docs(n=50, seed=0, **kw):
    return wd.make_documents(n, rng=np.random.default_rng(seed), **kw)


def test_documents_are_seeded_and_hold_each_entity_once():
    a, b, c = docs(), docs(), docs(seed=1)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
    for d in range(len(a)):
        counts = np.bincount(a.tags[d].reshape(-1), minlength=len(wd.TAGS))
        assert counts[1:].tolist() == [1, 1, 1, 1]
        assert (a.tokens[d][a.tags[d] > 0] != wd.PAD).all()


def test_rules_are_right_of_keys_and_blind_to_layout():
    right = docs(200, templates=(0, 1))
    below = docs(200, templates=(2, 3))
    f1_right = wd.entity_macro_f1(wd.rule_labels(right), right.tags)
    f1_below = wd.entity_macro_f1(wd.rule_labels(below), below.tags)
    assert f1_right > 0.85 and f1_below < 0.5
    # The TOTAL rule also fires on "Subtotal": more TOTAL tags than totals.
    assert (wd.rule_labels(right) == 2).sum() == 2 * len(right)


def test_token_table_neighbours():
    d = docs(3)
    table = wd.token_table(d)
    assert len(table.tags) == int((d.tokens != wd.PAD).sum())
    for row in range(20):
        doc, flat = int(table.doc[row]), int(table.flat[row])
        r, c = divmod(flat, wd.COLS)
        assert table.feats[row, 0] == d.tokens[doc, r, c]
        left = [t for t in d.tokens[doc, r, :c] if t != wd.PAD]
        above = [t for t in d.tokens[doc, :r, c] if t != wd.PAD]
        assert table.feats[row, 1] == (left[-1] if left else 0)
        assert table.feats[row, 2] == (above[-1] if above else 0)


def test_macro_f1():
    gold = np.array([0, 1, 2, 3, 4, 0])
    assert wd.entity_macro_f1(gold, gold) == 1.0
    pred = np.array([0, 1, 2, 3, 0, 0])  # misses INVOICE_ID
    assert abs(wd.entity_macro_f1(pred, gold) - 0.75) < 1e-12


def test_tagger_learns_layout_from_clean_documents():
    train, test = wd.token_table(docs(200)), wd.token_table(docs(100, seed=9))

    def ce(logits, labels, weights):
        return F.cross_entropy(logits, labels)

    model = wd.train_tagger(train, ce, steps=300, generator=torch.Generator().manual_seed(0))
    pred = wd.predict_proba(model, test).argmax(1)
    assert wd.entity_macro_f1(pred, test.tags) > 0.9
