"""ELRLoss against the official ELR code (shengliu66/ELR, ELR/model/loss.py, commit 934af53).

The fixture holds only the inputs (and the recipe that drew them) and the official loss's
outputs: the loss, its gradient with respect to the logits and the target buffer after each of
five steps, computed once outside this repository. The official source is not copied here.
"""

import json
from pathlib import Path

import torch

from noisefit_lib import noisy_labels as nl

FIXTURE = Path(__file__).parent / "fixtures" / "elr_reference.json"


def max_errors() -> dict[str, float]:
    ref = json.loads(FIXTURE.read_text())
    loss_fn = nl.ELRLoss(ref["num_examples"], ref["num_classes"], beta=ref["beta"], lam=ref["lam"])
    worst = {"loss": 0.0, "grad_logits": 0.0, "target": 0.0}
    for step in ref["steps"]:
        logits = torch.tensor(step["logits"], dtype=torch.float32, requires_grad=True)
        loss = loss_fn(logits, torch.tensor(step["labels"]), torch.tensor(step["index"]))
        (grad,) = torch.autograd.grad(loss, logits)
        worst["loss"] = max(worst["loss"], abs(float(loss.detach()) - step["loss"]))
        diff = (grad - torch.tensor(step["grad_logits"])).abs().max()
        worst["grad_logits"] = max(worst["grad_logits"], float(diff))
        diff = (loss_fn.target - torch.tensor(step["target_after"])).abs().max()
        worst["target"] = max(worst["target"], float(diff))
    return worst


def test_elr_loss_matches_the_official_code():
    worst = max_errors()
    assert worst["loss"] < 1e-5, worst
    assert worst["grad_logits"] < 1e-6, worst
    assert worst["target"] < 1e-6, worst
