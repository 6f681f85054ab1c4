"""`dynamic`: int8 weights, activations quantized at run time; no calibration data needed.

Linear layers become torch.ao dynamic-quantized Linears with per-channel int8 weights (per-tensor
scales lose noticeably more on transformer FFNs; see environment.md). LSTM/GRU are quantized too.
torch has no CUDA kernels for this, so on CUDA the method is skipped with a note.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..registry import Method, register_method
from ..modules import get_module, replace_module
from ._torch_ao import quiet_torch_ao

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU}


def _qconfig(module_type: str):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # torch.ao has per-channel dynamic kernels for Linear only; RNNs keep per-tensor weights.
    return per_channel_dynamic_qconfig if module_type == "Linear" else default_dynamic_qconfig


@register_method
class DynamicQuantization(Method):
    name = "dynamic"
    kind = "quantization"
    cpu_only = True

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        targets = {
            path: type_name
            for path, module in model.named_modules()
            for type_name, cls in _FLOAT_TYPES.items()
            if type(module) is cls and path
        }
        if not targets:
            ctx.note(logger, "dynamic: the model has no Linear/LSTM/GRU layer to quantize.")
            return model, []
        spec = {path: _qconfig(type_name) for path, type_name in targets.items()}
        with quiet_torch_ao():
            from torch.ao.quantization import quantize_dynamic

            quantized = quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)
        int8 = {path: quantized.get_submodule(path) for path in targets}
        kept_float = self._layers_to_keep_float(model, int8, ctx)
        for path in targets:
            if path in kept_float:
                logger.debug("dynamic: %s stays float (loss %.5f when quantized alone)", path, kept_float[path])
            else:
                logger.debug("dynamic: int8 %s %s", targets[path], path)
                replace_module(model, path, int8[path])
        quantized_targets = {path: name for path, name in targets.items() if path not in kept_float}
        if not quantized_targets:
            ctx.note(logger, "dynamic: every layer hurt accuracy beyond the budget when quantized; nothing was quantized.")
            return model, []
        if kept_float:
            ctx.note(logger, f"dynamic: {len(kept_float)} of {len(targets)} layers kept in float to stay within the accuracy budget: {sorted(kept_float)}")
        record = {"method": self.name, "modules": quantized_targets, "dtype": "qint8", "engine": torch.backends.quantized.engine}
        if kept_float:
            record["kept_float"] = {path: round(loss, 6) for path, loss in kept_float.items()}
        return model, [record]

    @staticmethod
    def _layers_to_keep_float(model: nn.Module, int8: dict[str, nn.Module], ctx) -> dict[str, float]:
        """Mixed precision: the fewest most-sensitive layers to keep in float so the loss fits the budget.

        Half of the remaining accuracy budget is allowed here, leaving the rest to later steps.
        Each layer's sensitivity is the loss with only that layer quantized; layers are then quantized
        from least to most sensitive, and a binary search finds the longest prefix within the budget.
        """
        if ctx.measure_loss is None:
            return {}
        threshold = ctx.config.preserve_accuracy_threshold
        floats = {path: model.get_submodule(path) for path in int8}
        already = ctx.measure_loss(model)  # loss of earlier pipeline steps (e.g. factorization)
        if already > threshold:
            return {}  # the candidate is out of budget whatever happens here; don't spend time searching
        budget = already + 0.5 * (threshold - already)

        def loss_with(paths) -> float:
            for path in paths:
                replace_module(model, path, int8[path])
            try:
                return ctx.measure_loss(model)
            finally:
                for path in paths:
                    replace_module(model, path, floats[path])

        if loss_with(list(int8)) <= budget:
            return {}
        sensitivity = {path: loss_with([path]) for path in int8}
        order = sorted(int8, key=sensitivity.get)
        low, high = 0, len(order) - 1  # invariant: prefix `low` fits (0 always does), prefix `high + 1` does not
        while low < high:
            middle = (low + high + 1) // 2
            if loss_with(order[:middle]) <= budget:
                low = middle
            else:
                high = middle - 1
        return {path: sensitivity[path] for path in order[low:]}

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        with quiet_torch_ao():
            from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
            from torch.ao.quantization import quantize_dynamic

            for path, type_name in record["modules"].items():
                module = get_module(model, path)
                if type_name == "Linear" and isinstance(module, nn.Linear):
                    # Structure only: the int8 weights come from the safetensors load.
                    replace_module(model, path, DynamicLinear(module.in_features, module.out_features, bias_=module.bias is not None, dtype=torch.qint8))
                elif type_name in _FLOAT_TYPES and isinstance(module, _FLOAT_TYPES[type_name]):
                    # quantize_dynamic swaps children only, so the RNN goes in a one-item container.
                    holder = quantize_dynamic(nn.Sequential(module), {type(module): _qconfig(type_name)}, dtype=torch.qint8)
                    replace_module(model, path, holder[0])
                else:
                    raise RecipeError(f"dynamic: '{path}' is a {type(module).__name__}, the recipe expects a {type_name}.")
        return model
