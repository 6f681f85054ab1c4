"""Static int8 layer by layer, for models torch.fx cannot trace (transformers, data-dependent code).

torch.ao's eager mode: each Conv/Linear goes in a `QuantWrapper` (quantize with a calibrated scale ->
int8 kernel -> dequantize), so nothing about the model's Python needs tracing and keyword inputs are
fine. Activations are calibrated with histogram observers over the full 8-bit range (x86's default
is 7 bits); weights are per-channel symmetric int8, on 7 bits (`PORTABLE_MAX` levels per side) unless
a run asks for full range: full-range weights and activations saturate on CPUs without VNNI
(`_int8_isa`), and the record says which was built. Large embedding tables become int8 (or 4-bit) rows. Without
fused conv-bn-relu and with a quantize/dequantize per layer this is slower than the graph flow, and
per-tensor static activation scales fit transformers worse than `dynamic`'s per-token ones: it is
the fallback that keeps `static` available, and the report's measured fidelity says what it costs.

Reloading wraps the same layers and converts without calibration (placeholder scales), then the
strict safetensors load fills in the weights, scales and zero-points.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable

import torch
import torch.nn as nn

from ...core.errors import OptimizationError, RecipeError
from ..inputs import Inputs, call_model
from ..modules import get_module, replace_module, shared_parameter_ids
from ._embeddings import quantize_embeddings, restore_embeddings
from . import _int8_isa
from ._fast_forward import accelerate
from ._int8_linear import PORTABLE_MAX
from ._torch_ao import quiet_torch_ao
from ._warm_up import input_spec

logger = logging.getLogger(__name__)
FLOW = "eager"
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# x86 quantized Linear runs on fbgemm; Conv on oneDNN where cpuinfo reports AVX512-VNNI, else on fbgemm.
KERNELS = ("fbgemm", "onednn")


def _qconfig(portable: bool = True):
    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig, default_per_channel_weight_observer

    weight = default_per_channel_weight_observer
    if portable:  # symmetric: scale = max|w| / PORTABLE_MAX, so |int8 weight| <= PORTABLE_MAX
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                    quant_min=-PORTABLE_MAX, quant_max=PORTABLE_MAX)
    return QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=weight)


def layer_paths(model: nn.Module) -> list[str]:
    """Conv/Linear layers with weights of their own (a tied weight must stay one float tensor)."""
    shared = shared_parameter_ids(model)
    return [path for path, module in model.named_modules()
            if path and type(module) in LAYERS and id(module.weight) not in shared]


def _wrap_and_convert(model: nn.Module, paths: list[str], batches: Iterable[Inputs], portable: bool = True) -> None:
    with quiet_torch_ao():
        from torch.ao.quantization import QuantWrapper, convert, prepare

        qconfig = _qconfig(portable)
        for path in paths:
            wrapper = QuantWrapper(get_module(model, path))
            wrapper.qconfig = qconfig
            replace_module(model, path, wrapper)
        prepare(model, inplace=True)
        with torch.no_grad():  # not inference_mode: observers update their buffers in place
            for batch in batches:
                call_model(model, batch)
        with warnings.catch_warnings():  # uncalibrated observers (reload) warn; the load replaces their scales
            warnings.simplefilter("ignore")
            convert(model.eval(), inplace=True)


def quantize(model: nn.Module, ctx, method: str, budget: float | None) -> tuple[nn.Module, dict[str, Any]]:
    paths = layer_paths(model)
    if not paths:
        raise OptimizationError(f"{method}: the model has no Conv or Linear layer to quantize.")
    model.eval()
    portable = _int8_isa.wants_portable(ctx, KERNELS, method)
    _wrap_and_convert(model, paths, ctx.calibration_inputs or [ctx.example_inputs], portable)
    embeddings = quantize_embeddings(model, ctx, None if budget is None else 0.25 * budget, method)
    record: dict[str, Any] = {"method": method, "flow": FLOW, "layers": paths, "engine": torch.backends.quantized.engine,
                              _int8_isa.FIELD: _int8_isa.portable("7-bit weights") if portable else _int8_isa.full_range(KERNELS)}
    record.update(embeddings)
    spec = input_spec(ctx.example_inputs)
    if spec is not None:
        record["inputs"] = spec
    return accelerate(model), record


def rebuild(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    paths = record.get("layers")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise RecipeError(f"{record.get('method')}: the recipe's 'layers' must be a list of module paths.")
    _int8_isa.check(record, record["method"], legacy_kernels=KERNELS)  # before the field: full-range int8
    for path in paths:
        if type(get_module(model, path)) not in LAYERS:
            raise RecipeError(f"{record['method']}: '{path}' is a {type(get_module(model, path)).__name__}, the recipe expects a Conv or Linear.")
    model.eval()
    _wrap_and_convert(model, paths, [])
    restore_embeddings(model, record, record["method"])
    return accelerate(model, record.get("inputs"))
