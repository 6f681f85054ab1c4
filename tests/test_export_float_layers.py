"""Which Linears of a `dynamic` variant its ONNX export keeps float (ONNX Runtime has per-tensor activations only)."""

from __future__ import annotations

import torch

from pdo_hub.export._float_layers import float_layers
from tiny_models import MLP


class RowNormalized(MLP):
    """fc1's output rows scaled to unit length: fc2 and fc3 never see an outlier token, fc1 sees its input's."""

    def forward(self, x):
        hidden = self.fc1(x)
        hidden = hidden / hidden.norm(dim=-1, keepdim=True)
        return self.fc3(self.act(self.fc2(hidden)))

ALL_PER_TOKEN = [{"method": "dynamic", "schemes": dict.fromkeys(["fc1", "fc2", "fc3"], "per_token_asymmetric")}]


def _inputs(outlier: float) -> list[torch.Tensor]:
    batches = [torch.randn(16, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(6)]
    for batch in batches:
        batch[0] *= outlier  # one token far larger than the others: one scale per tensor crushes the rest
    return batches


def test_the_layer_a_per_tensor_scale_breaks_stays_float_and_the_others_are_quantized():
    torch.manual_seed(0)
    model = RowNormalized(width=64).eval()
    kept = float_layers(ALL_PER_TOKEN, model, _inputs(outlier=1000.0), threshold=0.02)
    assert kept == ["fc1"]


def test_layers_that_per_tensor_int8_serves_within_the_budget_are_all_quantized():
    torch.manual_seed(0)
    assert float_layers(ALL_PER_TOKEN, MLP(width=64).eval(), _inputs(outlier=1.0), threshold=0.02) == []


def test_a_record_of_symmetric_per_token_layers_keeps_exactly_those_float_unmeasured():
    # Variants from before per-token zero points: `dynamic` already measured which layers per-tensor int8 breaks.
    records = [{"method": "dynamic", "schemes": {"fc1": "full_range", "fc2": "per_token", "fc3": "full_range"}}]
    assert float_layers(records, MLP().eval(), [], threshold=0.02) == ["fc2"]
