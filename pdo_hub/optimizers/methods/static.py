"""`static`: int8 weights and activations, calibrated; the fastest CPU path.

FX graph mode on the x86 backend: conv-bn(-relu) and add-relu fused, per-channel symmetric int8
weights, activations calibrated with histogram observers on `ctx.calibration_inputs` (the user's
`calibration_data`, or inputs synthesized from `example_inputs`). Convolutions and Linears run as int8
kernels; the result runs as a frozen TorchScript trace at inference (see `_fast_graph`).

Models torch.fx cannot trace (keyword-only transformers inputs, data-dependent control flow) are
quantized layer by layer instead (`_eager_static`: calibrated per-tensor activations around each
Conv/Linear, int8 embedding rows), and the report says so. A model with nothing to quantize raises
`OptimizationError`, which the optimizer turns into a rejected candidate: the model is never lost.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from ...core.errors import OptimizationError
from ..registry import Method, register_method
from . import _eager_static as eager
from . import _graph_quant as gq
from ._mixed_precision import split_budget

logger = logging.getLogger(__name__)


def calibrated(model: nn.Module, ctx, method: str, *, float_layers=()) -> tuple[nn.Module, tuple]:
    """Prepare `model` for int8 and run the calibration inputs through it: (prepared, example args)."""
    if not gq.quantizable_layers(model):
        raise OptimizationError(f"{method}: the model has no Conv or Linear layer to quantize.")
    args = gq.positional_inputs(ctx.example_inputs, method)
    prepared = gq.prepare(model, args, method, float_layers=float_layers)
    gq.calibrate(prepared, ctx.calibration_inputs or [ctx.example_inputs])
    return prepared, args


@register_method
class StaticQuantization(Method):
    name = "static"
    kind = "quantization"
    cpu_only = True

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        layers = gq.quantizable_layers(model)
        try:
            prepared, args = calibrated(model, ctx, self.name)
        except OptimizationError as err:
            if not layers:
                raise
            ctx.note(logger, f"static: graph mode is unavailable ({err}); quantizing layer by layer (eager mode) instead.")
            quantized, record = eager.quantize(model, ctx, self.name, split_budget(ctx, model))
            return quantized, [record]
        quantized = gq.convert(prepared, in_place=True)
        logger.debug("static: %d layers int8 after calibration on %d batches", len(layers), len(ctx.calibration_inputs))
        return quantized, [gq.make_record(self.name, args, quantized, layers, {}, flow="ptq")]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        if record.get("flow") == eager.FLOW:
            return eager.rebuild(model, record)
        return gq.rebuild(model, record)
