"""The preference losses against TRL's ``DPOTrainer.dpo_loss`` (huggingface/trl, trl 0.19.1).

TRL ships robust DPO as ``loss_type="robust"`` and conservative DPO as ``loss_type="sigmoid"``
with ``label_smoothing`` = eps (``trl/trainer/dpo_trainer.py``). The fixture holds only the
inputs (policy and reference log-probabilities, float64, with the recipe that drew them) and
TRL's outputs (per-pair losses and their gradients with respect to the chosen log-probability),
computed once outside this repository by calling the method with a stand-in ``self``. TRL's
source is not copied here. Explained in: notebooks/part3_noisy_labels/19_robust_dpo.py.
"""

import json
from pathlib import Path

import numpy as np

from noisefit_lib import preferences as prefs

FIXTURE = Path(__file__).parent / "fixtures" / "rdpo_reference.json"
METHOD = {"sigmoid": "cDPO", "robust": "rDPO"}


def max_errors() -> dict[str, float]:
    ref = json.loads(FIXTURE.read_text())
    x = {k: np.array(v) for k, v in ref["inputs"].items()}
    h = (x["chosen_logps"] - x["ref_chosen_logps"]) - (
        x["rejected_logps"] - x["ref_rejected_logps"]
    )
    worst = {"loss": 0.0, "grad": 0.0}
    for case in ref["cases"]:
        beta, eps, method = case["beta"], case["label_smoothing"], METHOD[case["loss_type"]]
        loss = prefs.loss_fn(method, beta, eps)(h)
        grad = -beta * prefs.loss_weight(method, h, beta, eps)  # d loss / d h = d / d chosen
        worst["loss"] = max(worst["loss"], float(np.abs(loss - case["losses"]).max()))
        worst["grad"] = max(worst["grad"], float(np.abs(grad - case["grad_chosen_logps"]).max()))
        if eps == 0:  # plain DPO is the eps = 0 case of both
            dpo = prefs.dpo_loss(h, beta)
            worst["loss"] = max(worst["loss"], float(np.abs(dpo - case["losses"]).max()))
    return worst


def test_losses_match_trl():
    worst = max_errors()
    assert worst["loss"] < 1e-12, worst
    assert worst["grad"] < 1e-12, worst
