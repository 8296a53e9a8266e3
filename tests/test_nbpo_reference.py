"""implicit_feedback.sgd_step against the official NBPO code (Wenhui-Yu/NBPO, commit ac9b1b5).

The fixture holds only the inputs (the initial factors and the accepted (u, i, j) triplets of
each batch, as drawn by the official ``train_Model`` of ``_BPR.py``, ``_BPO.py`` and ``_NBPO.py``
under Python 2.7 and NumPy 1.16 with a recorded RandomState) and the official outputs (the
factors after two epochs), computed once outside this repository. The official source is not
copied here.
"""

import json
from pathlib import Path

import numpy as np

from noisefit_lib import implicit_feedback as imf

FIXTURE = Path(__file__).parent / "fixtures" / "nbpo_reference.json"


def replay(method: str) -> float:
    ref = json.loads(FIXTURE.read_text())
    setup, case = ref["setup"], ref["methods"][method]
    params = {k: np.array(v) for k, v in case["init"].items()}
    eta = setup["eta"]
    for epoch in range(setup["epoch"]):
        eta *= 0.99
        for batch in (b for b in case["batches"] if b["epoch"] == epoch):
            t = np.array(batch["triplets"])
            imf.sgd_step(
                method,
                params,
                t[:, 0],
                t[:, 1],
                t[:, 2],
                eta=eta,
                lambda_r=setup["lambda_r"],
                lambda_phi=setup["lambda_phi"],
            )
    return max(float(np.abs(params[k] - np.array(v)).max()) for k, v in case["final"].items())


def test_bpr_bpo_nbpo_updates_match_the_official_code():
    for method in imf.METHODS:
        assert replay(method) < 1e-12, method
