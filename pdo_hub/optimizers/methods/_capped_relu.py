"""ReLU6 (any Hardtanh(0, c)) after a Conv or Linear runs inside the int8 layer, as ReLU does.

torch.ao fuses conv(-bn)-relu into one int8 op but has no such pattern for relu6. MobileNetV2's 35
ReLU6 ran as separate ops on the int8 tensors (an in-place clamp and a copy each), and each conv's
int8 output spent its 256 levels on the range before the clamp: negatives and values over 6 that the
clamp then threw away. So, before prepare, a ReLU goes in front of each such clamp (`relu_before_clamps`;
relu then clamp(0, c) is the clamp): torch.ao fuses conv-bn-relu and calibrates the range after the
ReLU. After convert, each fused layer's output range is capped at c (`fold_clamps`): int8 saturation
then does the clamp, and the Hardtanh leaves the graph. Both steps depend on the structure only, so
`rebuild` repeats them on the skeleton, and the capped scales come back with the state dict.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_QUINT8_MAX = 255


def relu_before_clamps(model: nn.Module) -> nn.Module:
    """A traced copy with a ReLU before every clamp(0, c) that follows a Conv or Linear (through a
    BatchNorm or not); the model itself when it has none or cannot be traced."""
    if isinstance(model, torch.fx.GraphModule):  # already traced (`without_identities`): look before tracing again
        if not _fusable_clamps(model):
            return model
    elif not any(isinstance(m, nn.Hardtanh) for m in model.modules()):
        return model
    try:  # a new graph even for a GraphModule: the caller's own graph is never edited
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # prepare_fx traces the same way and reports the failure
        return model
    clamps = _fusable_clamps(traced)
    if not clamps:
        return model
    for node in clamps:
        with traced.graph.inserting_before(node):
            relu = traced.graph.call_function(F.relu, (node.args[0],))
        node.args = (relu, *node.args[1:])
    traced.recompile()
    return traced


def fold_clamps(graph: torch.fx.GraphModule) -> None:
    """Cap the output range of each fused int8 Conv/Linear + ReLU at the clamp that follows it, and drop the clamp."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU1d, ConvReLU2d, ConvReLU3d, LinearReLU

    changed = False
    for node in list(graph.graph.nodes):
        cap = _cap(graph, node)
        source = node.args[0] if cap is not None else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        layer = graph.get_submodule(source.target)
        if not isinstance(layer, (ConvReLU1d, ConvReLU2d, ConvReLU3d, LinearReLU)):
            continue
        # After the ReLU nothing is negative: the range becomes [0, min(top, cap)], where int8 saturation clamps.
        top = (_QUINT8_MAX - int(layer.zero_point)) * float(layer.scale)
        layer.scale, layer.zero_point = min(top, cap) / _QUINT8_MAX, 0
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
        changed = True
    if changed:
        graph.recompile()


def _cap(graph: torch.fx.GraphModule, node: torch.fx.Node) -> float | None:
    """c when `node` is a clamp(0, c) with c > 0 (nn.ReLU6, nn.Hardtanh, F.relu6, F.hardtanh), else None."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    if node.op == "call_module":
        module = graph.get_submodule(node.target)
        low, high = (module.min_val, module.max_val) if isinstance(module, nn.Hardtanh) else (None, None)
    elif node.op == "call_function" and node.target is F.relu6:
        low, high = 0.0, 6.0
    elif node.op == "call_function" and node.target is F.hardtanh:
        low = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        high = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
    else:
        return None
    if low != 0 or not isinstance(high, (int, float)) or high <= 0:
        return None
    return float(high)


def _fusable_clamps(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The clamp(0, c) nodes right after a Conv or Linear output (through a BatchNorm or not)."""
    return [node for node in graph.graph.nodes if _cap(graph, node) is not None and _after_layer(graph, node.args[0])]


def _after_layer(graph: torch.fx.GraphModule, node) -> bool:
    """Whether `node` is a Conv/Linear output (or its BatchNorm's) used only here: what torch.ao fuses with a ReLU."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_module" and len(node.users) == 1):
        return False
    module = graph.get_submodule(node.target)
    if isinstance(module, _NORMS):
        return _after_layer(graph, node.args[0])
    return type(module) in _PRODUCERS
