"""`python -m training speed`'s modes on the same batches: channels_last computes the same network as
fp32 (same weights, logits equal within float error) and bf16 autocast stays close; a real ResNet-18 on
small random batches, so the comparison itself is what is checked, not a speed."""

from __future__ import annotations

import torch

from training.model import create_model
from training.speed import cpu_has_bf16, run_mode


def test_modes_run_the_same_network_on_the_same_batches():
    torch.manual_seed(0)
    model = create_model("none", num_classes=2)
    data = [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1])) for _ in range(3)]
    fp32 = run_mode(model, data, channels_last=False, bf16=False)
    cl = run_mode(model, data, channels_last=True, bf16=False)
    assert fp32["steps"] == cl["steps"] == 2 and fp32["images_per_s"] > 0
    assert torch.allclose(fp32["first_logits"], cl["first_logits"], atol=1e-4), "same weights, same logits"
    assert abs(fp32["losses"][0] - cl["losses"][0]) < 1e-4
    assert not torch.equal(fp32["first_logits"], fp32["last_logits"]), "the steps trained the copy"
    assert all(p.grad is None for p in model.parameters()), "the caller's model is left untouched"
    if cpu_has_bf16():
        bf = run_mode(model, data, channels_last=True, bf16=True)
        assert (bf["first_logits"] - fp32["first_logits"]).abs().max() < 0.5
