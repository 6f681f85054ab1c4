"""The variant's float graph: its structure (pruned widths, factorized layers, folded norms), int8 undone.

ONNX Runtime quantizes a float graph itself, so an export starts from the variant's structure in float:
the original skeleton with every record that is not a quantization replayed (`restore` rebuilds pruned
and factorized layers and the folded norms), then every layer's weights read from the variant. Int8
layers give their dequantized weights (what the variant computes with), so the float graph matches the
variant up to its activation rounding. A BatchNorm the variant's int8 graph fused into the conv before
it becomes an Identity here, and that conv takes the fused weights and bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdo_hub.core.errors import ExportError
from pdo_hub.export._dense import _copy_same, _fill_embedding, _fill_linear
from pdo_hub.export._variant import Variant, original_skeleton
from pdo_hub.optimizers.methods._fused_activation import layers_alone
from pdo_hub.optimizers.registry import get_method

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Where torch.ao's graph-mode int8 keeps the converted modules inside pdo-hub's fast-graph wrapper.
_GRAPH_PREFIXES = ("", "graph.")


def quantization_records(variant: Variant) -> list[dict]:
    return [r for r in variant.model.pdo_recipe.records if get_method(r["method"]).kind == "quantization"]


@torch.no_grad()
def float_structure(variant: Variant, skeleton: nn.Module | None = None) -> nn.Module:
    """A float model with the variant's structure and (dequantized) weights.

    Args:
        variant: The variant.
        skeleton: A fresh instance of the original architecture (default: rebuilt from the variant's source
            record; pass one for a model pdo-hub cannot rebuild by name, e.g. a custom class).

    Raises:
        ExportError: a layer of the structure has no counterpart in the variant.
    """
    model = skeleton if skeleton is not None else original_skeleton(variant.folder, variant.source)
    for record in variant.model.pdo_recipe.records:
        method = get_method(record["method"])
        if method.kind != "quantization":
            model = method.restore(model, record)
    with layers_alone(variant.model):  # a layer fused with the GELU after it would read as Linear + GELU
        for path, target in list(model.named_modules()):
            own = dict([*target.named_parameters(recurse=False), *target.named_buffers(recurse=False)])
            if not own:
                continue
            source = _find(variant.model, path)
            if isinstance(target, _NORMS) and source is None:
                _replace(model, path, nn.Identity())  # fused into the conv before it by the int8 graph
            elif source is None:
                raise ExportError(f"The variant has no module {path!r}: its int8 graph changed the structure in a way the "
                                  "export does not follow. Export the variant before quantization, or report the model.")
            elif isinstance(target, _CONVS):
                _fill_conv(path, target, source)
            elif isinstance(target, nn.Linear) and _quantized_weight(source) is not None:
                _fill_from_quantized(path, target, source)
            elif isinstance(target, nn.Linear):
                _fill_linear(path, target, source)
            elif isinstance(target, nn.Embedding):
                _fill_embedding(path, target, source)
            else:
                _copy_same(path, target, source, own)
    return model.eval()


def _find(variant: nn.Module, path: str) -> nn.Module | None:
    for prefix in _GRAPH_PREFIXES:
        try:
            return variant.get_submodule(prefix + path)
        except AttributeError:
            continue
    return None


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _quantized_weight(source: nn.Module) -> torch.Tensor | None:
    """The float weight of a torch.ao int8 module (`weight()` returns a quantized tensor), else None."""
    weight = getattr(source, "weight", None)
    if callable(weight) and not isinstance(weight, nn.Module):
        value = weight()
        return value.dequantize() if value.is_quantized else value
    return None


def _fill_from_quantized(path: str, target: nn.Module, source: nn.Module) -> None:
    weight = _quantized_weight(source)
    bias = source.bias() if callable(getattr(source, "bias", None)) else getattr(source, "bias", None)
    if tuple(weight.shape) != tuple(target.weight.shape):
        raise ExportError(f"{path}.weight is {tuple(weight.shape)} in the variant but {tuple(target.weight.shape)} in "
                          "its replayed structure: the recipe and the weights disagree.")
    target.weight.copy_(weight)
    if bias is not None:
        if target.bias is None:  # a norm was folded into it by the int8 graph
            target.bias = nn.Parameter(bias.detach().clone().float())
        else:
            target.bias.copy_(bias)


def _fill_conv(path: str, target: nn.Module, source: nn.Module) -> None:
    if _quantized_weight(source) is not None:
        _fill_from_quantized(path, target, source)
        return
    if type(source) is not type(target):
        raise ExportError(f"{path!r} is a {type(source).__name__} in the variant, a {type(target).__name__} in its "
                          "structure: the export does not know how to read its weights.")
    target.weight.copy_(source.weight)
    if source.bias is not None:
        if target.bias is None:
            target.bias = nn.Parameter(source.bias.detach().clone())
        else:
            target.bias.copy_(source.bias)
