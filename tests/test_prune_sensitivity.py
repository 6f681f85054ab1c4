"""`prune` scores units by how much the model's output moves when they go (`_sensitivity.py`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from helpers import apply_method
from pdo_hub.optimizers.methods._sensitivity import input_sensitivity

CPU = torch.device("cpu")


def _hidden_energy_the_output_ignores() -> nn.Sequential:
    """Hidden neurons 0-7 are loud (10x) but reach only outputs of layer 2 that the last layer ignores;
    neurons 8-15 are quiet and reach what the last layer reads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[0].weight[:8] *= 10
        model[0].bias[:] = 5.0  # every neuron on the ReLU's linear side for every input
        model[2].weight.zero_()
        model[2].weight[:4, :8] = torch.randn(4, 8)
        model[2].weight[4:, 8:] = torch.randn(4, 8)
        model[4].weight[:, :4] = 0
    return model


def test_a_loud_channel_the_rest_of_the_network_ignores_scores_zero():
    model = _hidden_energy_the_output_ignores()
    x = torch.randn(32, 4)
    scores = input_sensitivity(model, {"2": model[2]}, {"2": 16}, [x], CPU, {})["2"]
    assert torch.all(scores[:8] == 0), scores
    assert torch.all(scores[8:] > 0), scores


def test_prune_keeps_the_channels_the_output_depends_on_not_the_loudest():
    model = _hidden_energy_the_output_ignores()
    _, records = apply_method("prune", model, torch.randn(1, 4), target_compression_ratio=0.6, recovery_steps=0,
                              preserve_accuracy_threshold=0.0)
    kept = records[0]["modules"].get("0", {}).get("out")
    assert kept is not None and len(kept) < 16, records[0]["modules"]
    assert set(range(8, 16)) <= set(kept), f"kept hidden neurons {kept}"


def test_sensitivity_is_the_gauss_newton_loss_of_removing_each_unit():
    """For a linear model the expectation is exact: sum_s d^T P_s d / |e_s|^2, d the unit's centred contribution."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 5, bias=True).eval()
    x = torch.randn(8, 6) + 2.0
    mean = x.mean(0)
    scores = input_sensitivity(layer, {"": layer}, {"": 3}, [x], CPU, {"": mean}, draws=4000)[""]
    with torch.no_grad():
        e = layer(x)
        expected = torch.zeros(3, dtype=torch.float64)
        for unit in range(3):
            block = slice(2 * unit, 2 * unit + 2)
            d = (x[:, block] - mean[block]) @ layer.weight[:, block].T
            unit_e = e / e.norm(dim=1, keepdim=True)
            projected = d - (d * unit_e).sum(1, keepdim=True) * unit_e
            expected[unit] = float((projected.square().sum(1) / e.square().sum(1)).sum())
    assert torch.allclose(scores, expected, rtol=0.1), (scores, expected)


def test_no_sensitivity_when_the_output_is_not_differentiable():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(x).detach()

    model = Detached().eval()
    assert input_sensitivity(model, {"layer": model.layer}, {"layer": 3}, [torch.randn(4, 3)], CPU, {}) == {}
    assert all(p.requires_grad for p in model.parameters()), "parameters must get their requires_grad back"
