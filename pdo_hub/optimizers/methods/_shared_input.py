"""Sibling per-token int8 Linears that read the same input share its quantization and one GEMM.

A transformer's query, key and value projections read the very same hidden states. Each
`TokenInt8Linear` quantizes its input per token (a handful of small ops) and runs its own int8 GEMM;
for a batch-1 request of a few dozen tokens those small ops cost about as much as the GEMM. Grouped,
the input is quantized once and one GEMM runs on the members' weights side by side (a wider GEMM also
keeps the matrix units busier), and each member returns its columns.

The groups are found by watching one real eager call (`group_siblings`): layers that receive the same
tensor object, one after another, with the same input width and activation levels. No architecture
names are assumed; a cross-attention's key and value (reading the encoder's states) group apart from its
query. The result is exactly each member's own: the per-token scales depend on the input only, the int32
products of the wider GEMM are those of each member's GEMM, and the dequantization is per column.

The members keep their own buffers (the state dict is unchanged); the group holds concatenated copies,
dropped by `ungroup` (new weights, a cleared trace cache) and rebuilt on the next probe. A member's
outputs for the other members wait in a thread-local slot until they are asked for with the same input
(same object, and for tensors that count versions, unmodified since).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch
import torch.nn as nn

from ..modules import version_counter
from . import _token_int8_kernel
from ._int8_linear import TokenInt8Linear, per_token_int8_linear


class SharedInput:
    """One input quantization and one int8 GEMM for `members` (TokenInt8Linear, same in_features and levels)."""

    def __init__(self, members: list[TokenInt8Linear]) -> None:
        first = members[0]
        self.members = members
        self.index = {id(m): i for i, m in enumerate(members)}
        self.in_features, self.activation_levels = first.in_features, first.activation_levels
        self.widths = [m.out_features for m in members]
        with torch.no_grad():
            self.weight_t = torch.cat([m.weight_t for m in members], 1).contiguous()
            self.scale = torch.cat([m.scale for m in members])
            has_bias = [m.has_bias for m in members]
            self.bias = (torch.cat([m.bias if m.has_bias else torch.zeros(m.out_features) for m in members])
                         if any(has_bias) else None)
        self._local = threading.local()
        # Packed now, in eager mode: a group's first call is usually inside the trace being built, where
        # packing is not allowed and the group would run oneDNN's GEMM at every size.
        _token_int8_kernel.packed_weights(self, self.weight_t)

    def output(self, member: TokenInt8Linear, x: torch.Tensor) -> torch.Tensor:
        index = self.index[id(member)]
        pending = getattr(self._local, "pending", None)
        if pending is not None and pending[0] is x and pending[1] == version_counter(x) and index in pending[2]:
            outputs = pending[2]
            result = outputs.pop(index)
            if not outputs:
                self._local.pending = None
            return result
        outputs = dict(enumerate(self._compute(x)))
        result = outputs.pop(index)
        self._local.pending = (x, version_counter(x), outputs) if outputs else None
        return result

    def __reduce__(self) -> tuple:
        # A copy (deepcopy, pickle) of a grouped model comes ungrouped; its FastForward probes again.
        return _ungrouped, ()

    def _compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(per_token_int8_linear(self, x, self.activation_levels, self.weight_t, self.scale, self.bias).split(self.widths, -1))


def _ungrouped() -> None:
    return None


def group_siblings(model: nn.Module, run: Callable[[], Any]) -> tuple[Any, list[SharedInput]]:
    """Run `run()` (one eager call of `model`) watching its TokenInt8Linears; group the siblings found.

    Returns (the call's output, the groups installed). Layers already grouped are ungrouped first.
    """
    layers = [m for m in model.modules() if isinstance(m, TokenInt8Linear)]
    ungroup(layers)
    if len(layers) < 2:
        return run(), []
    seen: list[tuple[TokenInt8Linear, torch.Tensor]] = []  # holds the inputs, so no id is reused during the call
    handles = [layer.register_forward_pre_hook(lambda module, args: seen.append((module, args[0]))) for layer in layers]
    try:
        output = run()
    finally:
        for handle in handles:
            handle.remove()
    groups, current, used = [], [], set()
    for module, x in seen + [(None, None)]:
        if current and module is not None and x is current[0][1] and id(module) not in used \
                and (module.in_features, module.activation_levels) == (current[0][0].in_features, current[0][0].activation_levels):
            current.append((module, x))
            continue
        if len(current) > 1:
            groups.append(SharedInput([m for m, _ in current]))
            used.update(id(m) for m, _ in current)
        current = [(module, x)] if module is not None and id(module) not in used else []
    for group in groups:
        for member in group.members:
            member.shared_input = group
    return output, groups


def ungroup(layers) -> None:
    for layer in layers:
        if isinstance(layer, TokenInt8Linear):
            layer.shared_input = None
