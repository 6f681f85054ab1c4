"""FX graph-mode int8 machinery shared by `static`, `fx` and `qat`.

torch.ao's FX flow traces the model, fuses conv-bn-relu and add-relu, puts observers on activations,
and converts to int8 modules (per-channel weights, x86 backend). Because it works on the traced graph,
a module called twice (torchvision's BasicBlock reuses one ReLU) is just two nodes: no model edits.

Int8 operands are portable (`_int8_isa`): 8-bit activations and 7-bit weights (`PORTABLE_MAX` levels
per side), where torch.ao's x86 default has 7-bit activations and 8-bit weights. The default guards
CPUs without VNNI only within the calibrated range: activations beyond it still reach 255, and with the
libraries capped below VNNI the digits ResNet-18 flipped 11 of 400 predictions on inputs of twice the
contrast (1.2% output error in range, against 0.6% between the kernels without overflow), while 7-bit
weights bound every pair sum (0 flips). Top-1 stays 99.00% either way, and on all-MiniLM-L6-v2's
layer-by-layer flow 8-bit activations with 7-bit weights scored cosine 0.951 against 0.881.

Reloading never needs calibration data: `rebuild` re-runs prepare/convert on the fresh skeleton with
the recorded settings and zero inputs of the recorded shapes (the graph depends on structure only),
then the strict safetensors load fills in the int8 weights, scales and zero-points.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable

import torch
import torch.nn as nn

from ...core.errors import OptimizationError, RecipeError
from ..inputs import Inputs, call_model
from ..recipe import FORMAT_NEEDED
from . import _capped_relu, _int8_isa, _int8_lookup, _warm_up
from ._fast_graph import QuantizedGraph
from ._int8_linear import PORTABLE_MAX
from ._torch_ao import quiet_torch_ao

logger = logging.getLogger(__name__)

BACKEND = "x86"
_MAX_INPUT_ELEMENTS = 2**26  # elements of the zero inputs a record may ask `rebuild` to trace with
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CLAMPS_FIELD = "clamps_fused"  # a record's flag: ReLU6-style clamps run inside their int8 layers (`_capped_relu`)
LOOKUP_FIELD = "activation_lookups"  # a record's flag: SiLU/GELU/Mish between int8 layers are tables (`_int8_lookup`)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Paths of the layers FX turns into int8 modules (the unit of mixed precision)."""
    return [path for path, module in model.named_modules() if path and type(module) in QUANTIZABLE]


def positional_inputs(inputs: Inputs, method: str) -> tuple[torch.Tensor, ...]:
    """The example as a tuple of positional tensors; keyword inputs (transformers) cannot be traced here."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in inputs):
        return tuple(inputs)
    raise OptimizationError(
        f"{method}: graph-mode quantization needs positional tensor inputs; this model takes "
        f"{type(inputs).__name__} inputs (e.g. a transformers model)"
    )


def input_spec(args: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    return _warm_up.input_spec(args)


def spec_inputs(spec: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    """Positional example inputs of the recipe's spec (values do not matter: `rebuild` needs the structure)."""
    args, kwargs = _warm_up.spec_inputs(spec, limit=_MAX_INPUT_ELEMENTS)
    if kwargs:
        raise RecipeError(f"The recipe's input spec names keyword inputs {sorted(kwargs)[:5]}; graph-mode records take positional tensors only.")
    return args


def _portable_qconfigs(qat: bool):
    """(per-channel, per-tensor) QConfigs: 8-bit activations, 7-bit symmetric weights (see the module doc)."""
    from torch.ao.quantization import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                       MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                       PerChannelMinMaxObserver, QConfig)

    weights = {"dtype": torch.qint8, "quant_min": -PORTABLE_MAX, "quant_max": PORTABLE_MAX}
    if qat:  # torch.ao's x86 QAT defaults, with the ranges changed
        activation = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, reduce_range=False)
        per_channel = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, qscheme=torch.per_channel_symmetric, **weights)
        per_tensor = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, qscheme=torch.per_tensor_symmetric, **weights)
    else:
        activation = HistogramObserver.with_args(reduce_range=False)
        per_channel = PerChannelMinMaxObserver.with_args(qscheme=torch.per_channel_symmetric, **weights)
        per_tensor = MinMaxObserver.with_args(qscheme=torch.per_tensor_symmetric, **weights)
    return QConfig(activation=activation, weight=per_channel), QConfig(activation=activation, weight=per_tensor)


def qconfig_mapping(float_layers: Iterable[str] = (), *, qat: bool = False):
    """x86 defaults with portable int8 operands (histogram-calibrated activations, per-channel symmetric
    weights), some layers in float."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping

    mapping = get_default_qat_qconfig_mapping(BACKEND) if qat else get_default_qconfig_mapping(BACKEND)
    per_channel, per_tensor = _portable_qconfigs(qat)
    mapping.set_global(per_channel)  # Conv and Linear
    for kind in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, torch.nn.functional.conv_transpose1d,
                 torch.nn.functional.conv_transpose2d, torch.nn.functional.conv_transpose3d):
        mapping.set_object_type(kind, per_tensor)  # x86 has per-tensor weights only for transposed convs
    # Embedding tables stay float here (QAT's default has no valid embedding qscheme; `dynamic` has int8 rows).
    mapping.set_object_type(nn.Embedding, None)
    for path in float_layers:
        mapping.set_module_name(path, None)
    return mapping


def prepare(model: nn.Module, args: tuple[torch.Tensor, ...], method: str, *, float_layers: Iterable[str] = (), qat: bool = False,
            fuse_clamps: bool = True) -> nn.Module:
    """Trace, fuse and insert observers (fake-quant modules for QAT); tracing failures become OptimizationError.

    `fuse_clamps`: ReLU6-style clamps after a Conv/Linear are fused into it (`_capped_relu`); off only to
    rebuild a record made before that (its scales are the range before the clamp).
    """
    with quiet_torch_ao():
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        mapping = qconfig_mapping(float_layers, qat=qat)
        try:
            model = without_identities(model)
            if fuse_clamps:
                model = _capped_relu.relu_before_clamps(model)
            if qat:
                return prepare_qat_fx(model.train(), mapping, args)
            return prepare_fx(model.eval(), mapping, args)
        except Exception as err:  # symbolic tracing raises many types (TraceError, TypeError, ...)
            raise OptimizationError(
                f"{method}: torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}); "
                "the model is left unquantized."
            ) from err


def without_identities(model: nn.Module) -> nn.Module:
    """A traced copy with its nn.Identity calls removed, or the model itself when it has none.

    A BatchNorm folded into its conv leaves an Identity in its place (`norm_folding.py`), and
    conv -> Identity -> relu no longer matches torch.ao's conv-relu fusion pattern: the int8 model
    would run the ReLU as a separate op. Submodule paths are kept, so the recipe's names still apply.
    """
    if not any(type(m) is nn.Identity for m in model.modules()):
        return model
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # tracing fails the same way in prepare_fx, which reports it
        return model
    for node in list(traced.graph.nodes):
        if node.op == "call_module" and type(traced.get_submodule(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


@torch.no_grad()  # not inference_mode: observers update their buffers in place and must stay normal tensors
def calibrate(prepared: nn.Module, batches: Iterable[Inputs]) -> None:
    prepared.eval()
    with quiet_torch_ao():
        for batch in batches:
            call_model(prepared, batch)


def convert(prepared: nn.Module, float_layers: Iterable[str] = (), *, qat: bool = False, in_place: bool = False, accelerate: bool = True,
            fuse_clamps: bool = True, lookups: bool = True) -> QuantizedGraph:
    """Convert to int8, `float_layers` kept in float (they must be a superset of those kept at prepare).

    A copy is converted unless `in_place`, so one calibrated model serves many mixed-precision trials
    (which pass `accelerate=False`: a throw-away model is not worth a frozen trace). `lookups`: SiLU, GELU
    and Mish between int8 layers become table lookups (`_int8_lookup`); off only to rebuild older records.
    """
    with quiet_torch_ao():
        from torch.ao.quantization.quantize_fx import convert_fx

        float_layers = list(float_layers)
        # convert_fx accepts a mapping that only turns more layers off (None) than prepare's.
        mapping = qconfig_mapping(float_layers, qat=qat) if float_layers else None
        source = prepared if in_place else copy.deepcopy(prepared)
        graph = convert_fx(source.eval(), qconfig_mapping=mapping)
    if fuse_clamps:
        _capped_relu.fold_clamps(graph)
    if lookups:
        _int8_lookup.lookup_activations(graph)
    _int8_lookup.gate_multiplies(graph)  # bit-identical: for every graph
    return QuantizedGraph(graph, accelerate=accelerate)


def make_record(method: str, args: tuple[torch.Tensor, ...], graph: nn.Module, quantized: list[str], float_layers: dict[str, Any], *,
                flow: str) -> dict[str, Any]:
    """The record of `graph`, the converted model. One with activation tables needs a reader of recipe
    format 3: a version-2 reader would rebuild it without them and fail on their tensors."""
    record: dict[str, Any] = {
        "method": method, "backend": BACKEND, "flow": flow, "inputs": input_spec(args),
        "int8_layers": len(quantized), "engine": torch.backends.quantized.engine,
        _int8_isa.FIELD: _int8_isa.portable("7-bit weights"), CLAMPS_FIELD: True, LOOKUP_FIELD: True,
    }
    if any(isinstance(module, _int8_lookup.Int8Lookup) for module in graph.modules()):
        record[FORMAT_NEEDED] = 3
    if float_layers:
        record["float_layers"] = float_layers
    return record


def rebuild(model: nn.Module, record: dict[str, Any]) -> QuantizedGraph:
    """Structure only: the same prepare/convert on the skeleton, with zero inputs and no calibration.

    Observers that saw no data report placeholder scales; the strict load replaces every one of them.
    """
    if record.get("backend") != BACKEND:
        raise RecipeError(f"{record['method']}: the recipe uses backend {record.get('backend')!r}; this pdo-hub knows '{BACKEND}'.")
    args = spec_inputs(record["inputs"])
    float_layers = list(record.get("float_layers", {}))
    qat = record.get("flow") == "qat"
    fuse = record.get(CLAMPS_FIELD) is True  # records made before clamps were fused rebuild without it
    lookups = record.get(LOOKUP_FIELD) is True  # nor did those made before lookups have them
    prepared = prepare(model, args, record["method"], float_layers=float_layers, qat=qat, fuse_clamps=fuse)
    graph = convert(prepared, float_layers, qat=qat, in_place=True, fuse_clamps=fuse, lookups=lookups)
    graph.warm_up_inputs = record["inputs"]  # `load_optimized` builds the trace once the weights are in
    return graph
