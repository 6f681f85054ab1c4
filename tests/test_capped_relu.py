"""ReLU6 / Hardtanh(0, c) after a Conv or Linear runs inside the int8 layer (`_capped_relu`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import apply_method, reload_identical
from pdo_hub.optimizers.methods import _graph_quant as gq
from pdo_hub.optimizers.methods._fast_graph import QuantizedGraph
from pdo_hub.optimizers.recipe import Recipe


class ConvBnReLU6(nn.Module):
    """MobileNetV2's conv-bn-relu6 unit twice, then a Linear with a functional clamp at 3."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)
        self.conv2, self.act2 = nn.Conv2d(16, 16, 1), nn.ReLU6()
        self.fc = nn.Linear(16, 8)
        with torch.no_grad():
            self.conv1.weight.mul_(gain)  # a wide range before the clamp
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return F.hardtanh(self.fc(x.mean((2, 3))), 0.0, 3.0)


def _clamps_called(graph: torch.fx.GraphModule) -> list[str]:
    called = []
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), nn.Hardtanh):
            called.append(node.target)
        elif node.op == "call_function" and node.target in (F.hardtanh, F.relu6):
            called.append(node.name)
    return called


def _quantized(model: nn.Module, method: str = "static"):
    optimized, _ = apply_method(method, model, torch.randn(1, 3, 16, 16), recovery_steps=2)
    return optimized


@pytest.mark.parametrize("method", ["static", "qat"])
def test_relu6_and_functional_clamp_run_inside_fused_int8_layers(method):
    torch.manual_seed(0)
    model = ConvBnReLU6(gain=8.0).eval()
    optimized = _quantized(model, method)
    assert isinstance(optimized, QuantizedGraph)
    assert _clamps_called(optimized.graph) == [], "a clamp still runs as its own op"
    fused = {name: module for name, module in optimized.graph.named_modules() if type(module).__name__ in ("ConvReLU2d", "LinearReLU")}
    assert set(fused) == {"conv1", "conv2", "fc"}
    caps = {"conv1": 6.0, "conv2": 6.0, "fc": 3.0}
    for name, module in fused.items():
        assert module.zero_point == 0 and 255 * module.scale <= caps[name] * (1 + 1e-6), f"{name}: range not capped"
    x = torch.randn(32, 3, 16, 16)
    with torch.inference_mode():
        got, expected = optimized(x), model(x)
    assert float(got.max()) <= 3.0 + 1e-6 and float(got.min()) >= 0.0
    assert float((got - expected).norm() / expected.norm()) < 0.05


def test_capped_range_spends_int8_levels_inside_the_clamp():
    """Conv outputs far wider than [0, 6]: torch.ao alone quantizes them over the whole range, then clamps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6()).eval()
    with torch.no_grad():  # channels far below 0 and far above 6 widen the range before the clamp to about [-50, 50]
        model[0].weight.mul_(4.0)
        model[0].bias[:4], model[0].bias[4:8] = -50.0, 50.0
    example, batches = torch.randn(1, 3, 16, 16), [torch.randn(2, 3, 16, 16) for _ in range(8)]
    ours = gq.prepare(copy.deepcopy(model), (example,), "static")
    plain = torch.ao.quantization.quantize_fx.prepare_fx(copy.deepcopy(model), gq.qconfig_mapping(), (example,))
    gq.calibrate(ours, batches)
    gq.calibrate(plain, batches)
    ours, plain = gq.convert(ours), torch.ao.quantization.quantize_fx.convert_fx(plain)
    assert _clamps_called(plain), "torch.ao fused the clamp itself: this fold is no longer needed"
    x = torch.randn(64, 3, 16, 16)
    with torch.inference_mode():
        expected = model(x)
        error = float((ours(x) - expected).norm() / expected.norm())
        plain_error = float((plain(x) - expected).norm() / expected.norm())
    assert error < plain_error / 3, f"capped range error {error:.4f} vs torch.ao's {plain_error:.4f}"


def test_folded_clamps_save_and_reload_identical(tmp_path):
    torch.manual_seed(0)
    model = ConvBnReLU6(gain=8.0).eval()
    optimized = _quantized(model)
    reloaded = reload_identical(optimized, tmp_path, ConvBnReLU6(), torch.randn(4, 3, 16, 16))
    assert _clamps_called(reloaded.graph) == []


class ClampsElsewhere(nn.Module):
    """Clamps that must stay: one on the input, one after a conv whose output is also used elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.conv.weight.mul_(10.0)

    def forward(self, x):
        y = self.conv(F.relu6(x * 4))
        return self.head(F.relu6(y) + y)


def test_clamps_not_fusable_keep_their_meaning():
    torch.manual_seed(0)
    model = ClampsElsewhere().eval()
    optimized = _quantized(model)
    assert len(_clamps_called(optimized.graph)) == 2
    x = torch.randn(16, 3, 16, 16)
    with torch.inference_mode():
        got, expected = optimized(x), model(x)
    assert float((got - expected).norm() / expected.norm()) < 0.05


def test_records_from_before_the_fold_rebuild_without_it(tmp_path):
    """A variant saved before clamps were fused has scales of the range before the clamp: it must keep its clamps."""
    torch.manual_seed(0)
    model = ConvBnReLU6(gain=8.0).eval()
    example = torch.randn(1, 3, 16, 16)
    prepared = gq.prepare(copy.deepcopy(model), (example,), "static", fuse_clamps=False)
    gq.calibrate(prepared, [torch.randn(2, 3, 16, 16) for _ in range(4)])
    old = gq.convert(prepared, in_place=True, fuse_clamps=False).eval()
    record = gq.make_record("static", (example,), old, gq.quantizable_layers(model), {}, flow="ptq")
    del record[gq.CLAMPS_FIELD]
    old.pdo_recipe = Recipe([record])
    reloaded = reload_identical(old, tmp_path, ConvBnReLU6(), torch.randn(4, 3, 16, 16))
    assert len(_clamps_called(reloaded.graph)) == 3
