"""Alignment-level bucketing against the official NoC code (kakaobrain/noc, commit 7a3a629).

The fixture holds the recipe of the inputs (seeded normal scores; the fitted edges and two
out-of-range scores as extra queries) and the official outputs: the edges of
``KBinsDiscretizer(strategy="uniform")`` as fitted in ``preprocess/get_noc_bucket.py``, the levels
of ``AlignmentLevelBucket.forward`` (``noc/models/bucketing/bucketing.py``) and its bin centres,
computed once outside this repository. The official source is not copied here.
"""

import json
from pathlib import Path

import numpy as np
import torch

from noisefit_lib import noisy_captions as nc

FIXTURE = Path(__file__).parent / "fixtures" / "noc_bucket_reference.json"


def test_bucketing_matches_the_official_code():
    ref = json.loads(FIXTURE.read_text())
    assert len(ref["cases"]) == 4
    for case in ref["cases"]:
        scores = np.random.default_rng(case["seed"]).normal(0.25, 0.08, case["n"])
        edges = nc.fit_bin_edges(scores, case["n_bins"])
        assert np.abs(edges - np.array(case["edges"])).max() < 1e-12
        query = np.concatenate([scores, edges, [scores.min() - 0.1, scores.max() + 0.1]])
        assert np.abs(query - np.array(case["query"])).max() == 0
        levels = nc.bucketize(torch.tensor(query), edges)
        assert levels.tolist() == case["levels"]
        assert levels[: case["n"]].tolist() == case["sklearn_levels_fit"]
        centres = (edges[1:] + edges[:-1]) / 2
        assert np.abs(centres - np.array(case["centers"])).max() < 1e-6
