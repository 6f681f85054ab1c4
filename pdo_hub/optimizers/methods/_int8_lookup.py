"""SiLU, GELU and Mish between int8 layers run as one 256-entry table lookup, not in float.

torch.ao has no int8 kernel for these functions, so a converted graph runs each of them as dequantize ->
float function -> quantize (EfficientNet-B0 has 49 SiLUs). When the input comes from an int8 layer, its
scale and zero point are fixed, and so are the output's: the output level is a function of the input
level alone. `lookup_activations` replaces each such sequence (also a chain of these functions between
the same dequantize and quantize, and torchvision's stochastic depth in eval mode: an identity that
only requantized) with an `Int8Lookup` that holds the 256 output levels, computed once
by those same ATen ops (so results are bit-identical), and maps each byte through them with
`pdo_hub::int8_lookup` (`_int8_lookup_kernel.cpp`; 15-126x faster than the three ops on EfficientNet-B0's
maps at batch 8, `scripts/bench_int8_elementwise.py`). Without the kernel library it runs the three ops,
with the same results. The rewrite depends on the graph's structure only, so `rebuild` repeats it on the
skeleton, and the tables, scales and zero points come back with the state dict.

The squeeze-excitation gate that follows (an int8 map times a per-channel int8 gate of shape (N, C, 1, 1))
ran in torch.ao's `quantized::mul`, whose broadcast loop took 5.0 ms on EfficientNet-B0's largest map at
batch 8; `gate_multiplies` points those calls at `scaled_mul`, which runs such a product on
`pdo_hub::int8_scale_channels` (0.57 ms there, 1.8-8.7x faster over its maps; the same formula,
bit-identical) and anything else on `quantized::mul`. It changes no state or result, so it applies to
every rebuilt graph, records made before it included.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _token_int8_kernel

_MODULES = (nn.SiLU, nn.GELU, nn.Mish)
_FUNCTIONS = (F.silu, F.gelu, F.mish)


class Functional(nn.Module):
    """A functional activation (`F.silu`, `F.gelu(approximate=...)`) as a stateless module."""

    def __init__(self, function, **options) -> None:
        super().__init__()
        self.fn, self.options = function, options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.options)

    def extra_repr(self) -> str:
        return ", ".join([self.fn.__name__, *(f"{k}={v!r}" for k, v in self.options.items())])


class Int8Lookup(nn.Module):
    """`quantize(function(dequantize(x)), scale, zero_point)` for a quint8 `x` of fixed scale, by table."""

    def __init__(self, function: nn.Module, table: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.function = function
        self.register_buffer("table", table.to(torch.uint8).contiguous())
        self.register_buffer("scale", scale.detach().clone().reshape(()))
        self.register_buffer("zero_point", zero_point.detach().clone().reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.quint8 and x.device.type == "cpu" and _token_int8_kernel.op() is not None:
            return torch.ops.pdo_hub.int8_lookup(x, self.table, float(self.scale), int(self.zero_point))
        return _requantized(self.function, x, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"


def table_for(function: nn.Module, in_scale: float, in_zero_point: int,
              scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The 256 output levels: the same dequantize -> function -> quantize as the graph ran, on every input level."""
    levels = torch._make_per_tensor_quantized_tensor(torch.arange(256, dtype=torch.uint8), in_scale, in_zero_point)
    return _requantized(function, levels, scale, zero_point).int_repr()


def _requantized(function: nn.Module, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """What torch.ao's converted graph runs for `function` between int8 layers: dequantize, function, quantize."""
    return torch.quantize_per_tensor(function(x.dequantize()), scale, zero_point, torch.quint8)


def lookup_activations(graph: torch.fx.GraphModule) -> int:
    """Replace each int8 layer -> dequantize -> SiLU/GELU/Mish -> quantize with an `Int8Lookup`; returns how many."""
    replaced, dropped_attributes = 0, set()
    for quantize in list(graph.graph.nodes):
        found = _match(graph, quantize)
        if found is None:
            continue
        chain, functions, dequantize, layer = found
        function = nn.Sequential(*functions) if len(functions) > 1 else functions[0]
        scale, zero_point = (getattr(graph, node.target) for node in quantize.args[1:3])
        table = table_for(function, float(layer.scale), int(layer.zero_point), scale, zero_point)
        name = _free_name(graph, f"{chain[-1].name}_int8_lookup")
        graph.add_submodule(name, Int8Lookup(function, table, scale, zero_point))
        with graph.graph.inserting_before(quantize):
            lookup = graph.graph.call_module(name, (dequantize.args[0],))
        quantize.replace_all_uses_with(lookup)
        for node in (quantize, *quantize.args[1:3], *reversed(chain), dequantize):
            if not node.users:
                graph.graph.erase_node(node)
                if node.op == "get_attr":
                    dropped_attributes.add(node.target)
        replaced += 1
    if replaced:
        still_read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
        for name in dropped_attributes - still_read:
            delattr(graph, name)  # a scale now held by its lookup: not saved twice
        graph.delete_all_unused_submodules()
        graph.recompile()
    return replaced


def _match(graph: torch.fx.GraphModule, quantize: torch.fx.Node):
    """(the activation nodes in order, their functions, dequantize, int8 layer) when `quantize` closes the pattern, else None."""
    if not (quantize.op == "call_function" and quantize.target is torch.quantize_per_tensor and len(quantize.args) == 4
            and quantize.args[3] == torch.quint8 and all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in quantize.args[1:3])):
        return None
    chain, functions, node = [], [], quantize.args[0]
    while isinstance(node, torch.fx.Node) and len(node.users) == 1:
        function = _function(graph, node)
        if function is None:
            break
        chain.insert(0, node)
        functions.insert(0, function)
        node = node.args[0]
    dequantize = node if chain else None
    if not (isinstance(dequantize, torch.fx.Node) and dequantize.op == "call_method" and dequantize.target == "dequantize"
            and len(dequantize.users) == 1 and isinstance(dequantize.args[0], torch.fx.Node) and dequantize.args[0].op == "call_module"):
        return None
    layer = graph.get_submodule(dequantize.args[0].target)
    scale, zero_point = getattr(layer, "scale", None), getattr(layer, "zero_point", None)
    if not (isinstance(scale, (float, torch.Tensor)) and isinstance(zero_point, (int, torch.Tensor))):
        return None  # its output scale is not a fixed attribute (or it is not an int8 layer)
    return chain, functions, dequantize, layer


def _function(graph: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    """The elementwise function `node` applies to its one input, as a fresh module, else None."""
    if _is_inactive_stochastic_depth(node):
        return nn.Identity()
    if len(node.args) != 1:
        return None
    if node.op == "call_module":
        module = graph.get_submodule(node.target)
        return _copy_of(module) if type(module) in _MODULES else None
    if node.op == "call_function" and node.target in _FUNCTIONS:
        options = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        if set(options) - {"approximate"}:
            return None
        return Functional(node.target, **options)
    return None


def _is_inactive_stochastic_depth(node: torch.fx.Node) -> bool:
    """torchvision's `stochastic_depth(x, p, mode, training=False)`: the identity, traced into EfficientNet's
    and ConvNeXt's residual blocks in eval mode (its dequantize -> quantize pair is a requantization)."""
    target = node.target
    if not (node.op == "call_function" and getattr(target, "__name__", "") == "stochastic_depth"
            and getattr(target, "__module__", "").startswith("torchvision.ops")):
        return False
    training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
    return training is False


def _copy_of(module: nn.Module) -> nn.Module:
    """A fresh copy of a stateless activation module, not in place (a lookup's fallback must not change its input)."""
    return type(module)(approximate=module.approximate) if isinstance(module, nn.GELU) else type(module)()


def _free_name(graph: torch.fx.GraphModule, name: str) -> str:
    candidate, index = name, 1
    while hasattr(graph, candidate):
        candidate, index = f"{name}_{index}", index + 1
    return candidate


def scaled_mul(a: torch.Tensor, b: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """`torch.ops.quantized.mul`; on pdo-hub's kernel when one operand gates the other's channels (see the module doc)."""
    if _token_int8_kernel.op() is not None:
        for x, gate in ((a, b), (b, a)):
            if _gates(gate, x):
                return torch.ops.pdo_hub.int8_scale_channels(x, gate, float(scale), int(zero_point))
    return torch.ops.quantized.mul(a, b, scale, zero_point)


def gate_multiplies(graph: torch.fx.GraphModule) -> int:
    """Point the graph's `quantized::mul` calls at `scaled_mul`; returns how many."""
    swapped = 0
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.quantized.mul and len(node.args) == 4 and not node.kwargs:
            node.target = scaled_mul
            swapped += 1
    if swapped:
        graph.recompile()
    return swapped


def _gates(gate: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `gate` is an (N or 1, C, 1, 1) quint8 factor of the channels-last quint8 map `x` (N, C, H, W)."""
    return (x.dtype == gate.dtype == torch.quint8 and x.device.type == gate.device.type == "cpu" and x.dim() == gate.dim() == 4
            and gate.shape[1] == x.shape[1] and gate.shape[2] == gate.shape[3] == 1 and gate.shape[0] in (1, x.shape[0])
            and x.is_contiguous(memory_format=torch.channels_last))
