"""SiLU, GELU and Mish between int8 layers run as 256-entry table lookups (`_int8_lookup`)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import apply_method, reload_identical
from pdo_hub.optimizers.methods import _graph_quant as gq
from pdo_hub.optimizers.methods import _int8_lookup, _token_int8_kernel
from pdo_hub.optimizers.recipe import FORMAT_NEEDED, Recipe
from pdo_hub.optimizers.storage import RECIPE_NAME, save_optimized

_FLOAT_ACTIVATIONS = (F.silu, F.gelu, F.mish)


class SwishNet(nn.Module):
    """EfficientNet-style units: conv-bn-SiLU, a functional SiLU, Mish, and SiLU then tanh GELU (a chain: one
    table) between convs, and a SiLU on the float input (no int8 layer before it: it must stay as it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(inplace=True)
        self.conv2, self.conv3 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.conv4, self.conv5 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 8, 1)
        self.gelu, self.mish = nn.GELU(approximate="tanh"), nn.Mish()
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(F.silu(x))))
        x = self.mish(self.conv3(F.silu(self.conv2(x))))
        x = self.gelu(F.silu(self.conv4(x)))
        return self.conv5(x)


def _float_activations(graph: torch.fx.GraphModule) -> list[str]:
    found = []
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), (nn.SiLU, nn.GELU, nn.Mish)):
            found.append(node.target)
        elif node.op == "call_function" and node.target in _FLOAT_ACTIVATIONS:
            found.append(node.name)
    return found


def _lookups(graph: torch.fx.GraphModule) -> list[str]:
    return [name for name, module in graph.named_modules() if isinstance(module, _int8_lookup.Int8Lookup)]


def _calibrated(model: nn.Module, lookups_in_record: bool = True):
    example = torch.randn(1, 3, 16, 16)
    prepared = gq.prepare(copy.deepcopy(model), (example,), "static")
    gq.calibrate(prepared, [torch.randn(4, 3, 16, 16) for _ in range(4)])
    converted = gq.convert(prepared, accelerate=False, lookups=lookups_in_record)
    record = gq.make_record("static", (example,), converted, gq.quantizable_layers(model), {}, flow="ptq")
    if not lookups_in_record:
        del record[gq.LOOKUP_FIELD]
    return prepared, record


def test_activations_between_int8_layers_become_lookups_with_the_same_results():
    torch.manual_seed(0)
    prepared, _ = _calibrated(SwishNet().eval())
    with_lookups, without = gq.convert(prepared), gq.convert(prepared, lookups=False)
    lookups = _lookups(with_lookups.graph)
    assert len(lookups) == 4
    chain = with_lookups.graph.get_submodule(lookups[-1]).function
    assert [type(m) for m in chain] == [_int8_lookup.Functional, nn.GELU], "SiLU then GELU: one table"
    assert _float_activations(with_lookups.graph) == ["silu"], "only the SiLU on the float input stays a float op"
    assert len(_float_activations(without.graph)) == 6
    x = torch.randn(8, 3, 16, 16) * 2
    with torch.inference_mode():
        for _ in range(3):  # eager, then the frozen trace (built on the second call)
            assert torch.equal(with_lookups(x), without(x))


@pytest.mark.skipif(_token_int8_kernel.op() is None, reason="needs pdo-hub's kernel library (a C++ compiler)")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_lookup_op_is_bit_identical_to_dequantize_function_quantize(layout):
    torch.manual_seed(0)
    x = torch.quantize_per_tensor(torch.randn(2, 24, 9, 7) * 4, 0.05, 117, torch.quint8)
    x = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last), "transposed": x.transpose(2, 3)}[layout]
    scale, zero_point = torch.tensor(0.021), torch.tensor(13)
    for function in (F.silu, F.gelu, F.mish):
        table = _int8_lookup.table_for(function, 0.05, 117, scale, zero_point)
        got = torch.ops.pdo_hub.int8_lookup(x, table, float(scale), int(zero_point))
        expected = torch.quantize_per_tensor(function(x.dequantize()), scale, zero_point, torch.quint8)
        assert got.shape == expected.shape and (got.q_scale(), got.q_zero_point()) == (expected.q_scale(), expected.q_zero_point())
        assert torch.equal(got.int_repr(), expected.int_repr()), function.__name__


def test_without_the_kernel_library_a_lookup_runs_the_aten_ops(monkeypatch):
    torch.manual_seed(0)
    prepared, _ = _calibrated(SwishNet().eval())
    graph = gq.convert(prepared, accelerate=False)
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        fused = graph(x)
        monkeypatch.setattr(_token_int8_kernel, "op", lambda: None)
        assert torch.equal(graph(x), fused)


@pytest.mark.parametrize("method", ["static", "qat"])
def test_lookups_save_and_reload_identical(method, tmp_path):
    torch.manual_seed(0)
    model = SwishNet().eval()
    optimized, records = apply_method(method, model, torch.randn(1, 3, 16, 16), recovery_steps=2)
    assert records[-1][gq.LOOKUP_FIELD] is True and len(_lookups(optimized.graph)) == 4
    reloaded = reload_identical(optimized, tmp_path, SwishNet(), torch.randn(4, 3, 16, 16))
    assert len(_lookups(reloaded.graph)) == 4


def test_variant_with_tables_needs_recipe_format_3_and_one_without_stays_at_2(tmp_path):
    """A version-2 reader would rebuild without the tables and fail on their tensors; it must refuse the
    recipe as newer instead. A variant without tables (no SiLU/GELU/Mish between int8 layers) loads there."""
    torch.manual_seed(0)
    with_tables, [record] = apply_method("static", SwishNet().eval(), torch.randn(1, 3, 16, 16))
    assert record[FORMAT_NEEDED] == 3
    save_optimized(with_tables, tmp_path / "tables")
    assert json.loads((tmp_path / "tables" / RECIPE_NAME).read_text())["version"] == 3
    _, [plain] = apply_method("static", nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(1, 3, 16, 16))
    assert FORMAT_NEEDED not in plain and Recipe([plain]).to_dict()["version"] == 2


def test_records_from_before_lookups_rebuild_without_them(tmp_path):
    torch.manual_seed(0)
    model = SwishNet().eval()
    prepared, record = _calibrated(model, lookups_in_record=False)
    old = gq.convert(prepared, in_place=True, lookups=False).eval()
    old.pdo_recipe = Recipe([record])
    reloaded = reload_identical(old, tmp_path, SwishNet(), torch.randn(4, 3, 16, 16))
    assert _lookups(reloaded.graph) == [] and len(_float_activations(reloaded.graph)) == 6


class Gated(nn.Module):
    """A squeeze-excitation block: the map times a sigmoid gate per channel, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.squeeze, self.head = nn.Conv2d(3, 24, 3, padding=1), nn.Conv2d(24, 24, 1), nn.Conv2d(24, 8, 1)

    def forward(self, x):
        x = F.silu(self.conv(x))
        gate = torch.sigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))
        return self.head(x * gate)


@pytest.mark.skipif(_token_int8_kernel.op() is None, reason="needs pdo-hub's kernel library (a C++ compiler)")
@pytest.mark.parametrize("gate_batch", [4, 1])
def test_channel_gate_multiply_is_bit_identical_to_quantized_mul(gate_batch):
    torch.manual_seed(0)
    x = torch.quantize_per_tensor(torch.randn(4, 40, 9, 7) * 3, 0.05, 128, torch.quint8).contiguous(memory_format=torch.channels_last)
    gate = torch.quantize_per_tensor(torch.rand(gate_batch, 40, 1, 1), 1 / 256, 0, torch.quint8)
    expected = torch.ops.quantized.mul(x, gate, 0.031, 121)
    for a, b in ((x, gate), (gate, x)):
        got = _int8_lookup.scaled_mul(a, b, 0.031, 121)
        assert (got.q_scale(), got.q_zero_point()) == (0.031, 121) and torch.equal(got.int_repr(), expected.int_repr())
    with pytest.raises(RuntimeError, match="gate must be"):
        torch.ops.pdo_hub.int8_scale_channels(x, gate[:, :39], 0.031, 121)


def test_graph_multiplies_run_through_scaled_mul_with_the_same_results(monkeypatch):
    torch.manual_seed(0)
    model = Gated().eval()
    prepared, _ = _calibrated(model)
    graph = gq.convert(prepared, accelerate=False)
    targets = [node.target for node in graph.graph.graph.nodes if node.op == "call_function"]
    assert _int8_lookup.scaled_mul in targets and torch.ops.quantized.mul not in targets
    gated = []
    real_gates = _int8_lookup._gates
    monkeypatch.setattr(_int8_lookup, "_gates", lambda gate, x: gated.append(real_gates(gate, x)) or gated[-1])
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        fused = graph(x)
        assert any(gated) or _token_int8_kernel.op() is None, "the gate product did not reach the kernel"
        monkeypatch.setattr(_token_int8_kernel, "op", lambda: None)  # quantized::mul itself
        assert torch.equal(graph(x), fused)


class Residual(nn.Module):
    """EfficientNet's residual block end: a conv, torchvision's stochastic depth (identity in eval), plus the input."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.stem, self.conv, self.drop = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), StochasticDepth(0.2, "row")

    def forward(self, x):
        x = self.stem(x)
        return self.drop(self.conv(x)) + x


def test_stochastic_depth_in_eval_becomes_a_lookup_with_the_same_results():
    torch.manual_seed(0)
    prepared, _ = _calibrated(Residual().eval())
    with_lookups, without = gq.convert(prepared), gq.convert(prepared, lookups=False)
    called = lambda graph: [n.name for n in graph.graph.nodes if n.op == "call_function" and "stochastic_depth" in n.name]  # noqa: E731
    assert called(without.graph) and not called(with_lookups.graph)
    assert len(_lookups(with_lookups.graph)) == 1
    x = torch.randn(8, 3, 16, 16)
    with torch.inference_mode():
        for _ in range(3):
            assert torch.equal(with_lookups(x), without(x))
