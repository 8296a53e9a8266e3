"""Tests of noisefit_lib.noisy_captions (chapter 23, noise-aware captioning)."""

import numpy as np
import pytest
import torch

from noisefit_lib import noisy_captions as nc
from noisefit_lib import noisy_labels


@pytest.fixture(scope="module")
def split_attrs():
    split = noisy_labels.load_digits_split(rng=np.random.default_rng(0))
    thresholds = nc.fit_thresholds(split.x_train)
    return split, nc.attributes(split.x_train, split.y_train, thresholds)


def test_attributes_are_balanced_and_captions_follow_the_grammar(split_attrs):
    split, attrs = split_attrs
    assert attrs.shape == (len(split.x_train), 3)
    assert 0.4 < attrs[:, 1].mean() < 0.6 and 0.35 < attrs[:, 2].mean() < 0.65
    assert np.array_equal(attrs[:, 0], split.y_train.numpy())
    words = nc.decode_words(nc.clean_caption(np.array([3, 1, 0]))[0])
    assert words == "three bold narrow"


def test_noise_mix_sums_to_one_and_validates():
    mix = nc.noise_mix(0.8)
    assert abs(sum(mix.values()) - 1) < 1e-12 and abs(mix["boilerplate"] - 0.48) < 1e-12
    with pytest.raises(ValueError):
        nc.noise_mix(1.5)


def test_corpus_kinds_have_the_promised_content(split_attrs):
    _, attrs = split_attrs
    corpus = nc.noisy_corpus(attrs, 0.8, captions_per_image=3, rng=np.random.default_rng(1))
    assert len(corpus.image) == 3 * len(attrs)
    truth = nc.clean_caption(attrs[corpus.image])
    kind = corpus.kind
    clean = kind == nc.NOISE_KINDS.index("clean")
    assert (corpus.tokens[clean] == truth[clean]).all()
    partial = kind == nc.NOISE_KINDS.index("partial")
    assert ((corpus.tokens[partial] != truth[partial]).sum(1) == 1).all()
    boiler = kind == nc.NOISE_KINDS.index("boilerplate")
    assert (corpus.tokens[boiler][:, 0] == nc.TOKEN["photo"]).all()
    assert abs(corpus.share("boilerplate") - 0.48) < 0.03


def test_bucketize_edges_and_out_of_range():
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    edges = nc.fit_bin_edges(scores, 4)
    assert np.allclose(edges, [0, 0.1, 0.2, 0.3, 0.4])
    levels = nc.bucketize(torch.tensor([-1.0, 0.0, 0.1, 0.25, 0.4, 9.0]), edges)
    assert levels.tolist() == [0, 0, 1, 2, 3, 3]


def test_scorer_ranks_clean_above_boilerplate(split_attrs):
    split, attrs = split_attrs
    val_attrs = nc.attributes(split.x_val, split.y_val, nc.fit_thresholds(split.x_train))
    scorer = nc.train_scorer(
        split.x_val,
        torch.from_numpy(nc.clean_caption(val_attrs)),
        generator=torch.Generator().manual_seed(0),
        steps=150,
    )
    corpus = nc.noisy_corpus(attrs, 0.6, captions_per_image=1, rng=np.random.default_rng(2))
    scores = nc.alignment_scores(
        scorer, split.x_train[corpus.image], torch.from_numpy(corpus.tokens)
    )
    by_kind = [scores[torch.from_numpy(corpus.kind == k)].mean() for k in range(4)]
    assert by_kind[0] > by_kind[3] > by_kind[1]  # clean > partial > boilerplate


def test_caption_metrics():
    attrs = np.array([[1, 0, 1], [2, 1, 0]])
    generated = nc.clean_caption(attrs).copy()
    generated[1] = [nc.TOKEN[w] for w in nc.BOILERPLATE[0]]
    m = nc.caption_metrics(generated, attrs)
    assert m["exact"] == 0.5 and m["boilerplate"] == 0.5 and m["digit_acc"] == 0.5
