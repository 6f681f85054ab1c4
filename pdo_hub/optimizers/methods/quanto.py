"""`quanto_int8`: optimum-quanto int8 weight-only quantization of Linear layers (fidelity first).

The design names `optimum`; its quantization backend is optimum-quanto. Weights become per-channel
int8 (`weight._data` int8 + `weight._scale` tensors in the state dict, plain tensors that safetensors
stores directly); activations stay in float, so fidelity is the highest of the int8 methods
(all-MiniLM-L6-v2 embedding cosine 0.9996) at the cost of speed (no int8 GEMM on CPU: slower than
FP32 eager here). It is not one of the config's `quantization_method` values; call it through the
registry (`get_method("quanto_int8")`) or add it to a candidate pipeline.

Requires the `optimum-quanto` package (`pip install optimum-quanto`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from ...core.errors import OptimizationError, RecipeError
from ..modules import shared_parameter_ids
from ..registry import Method, register_method
from ._torch_ao import quiet_torch_ao

logger = logging.getLogger(__name__)


def _quanto():
    try:
        with quiet_torch_ao():
            from optimum import quanto
    except ImportError as err:
        raise OptimizationError("quanto_int8 needs optimum-quanto: pip install optimum-quanto") from err
    return quanto


@register_method
class QuantoInt8(Method):
    name = "quanto_int8"
    kind = "quantization"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        quanto = _quanto()
        # quanto swaps a module under one name only: a module reachable under two names, or a weight tied
        # to another module, would silently stop being shared, so those stay float.
        names: dict[int, int] = {}
        for _, module in model.named_modules(remove_duplicate=False):
            names[id(module)] = names.get(id(module), 0) + 1
        shared = shared_parameter_ids(model)
        layers = [
            path for path, module in model.named_modules()
            if path and type(module) is nn.Linear and names[id(module)] == 1 and id(module.weight) not in shared
        ]
        if not layers:
            ctx.note(logger, "quanto_int8: the model has no unshared Linear layer to quantize.")
            return model, []
        with quiet_torch_ao():
            quanto.quantize(model, weights=quanto.qint8, include=layers)
            quanto.freeze(model)
        return model, [{"method": self.name, "weights": "qint8", "modules": layers}]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        quanto = _quanto()
        if record.get("weights") != "qint8":
            raise RecipeError(f"quanto_int8: unknown weight type {record.get('weights')!r} in the recipe.")
        for path in record["modules"]:
            module = model.get_submodule(path)
            if type(module) is not nn.Linear:
                raise RecipeError(f"quanto_int8: '{path}' is a {type(module).__name__}, the recipe expects a Linear.")
        with quiet_torch_ao():
            # Structure only: the strict load then sets int8 weights and scales.
            quanto.quantize(model, weights=quanto.qint8, include=list(record["modules"]))
        return model
