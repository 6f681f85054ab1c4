"""A variant's effective float weights, written back into the original architecture.

Runtimes that do not know pdo-hub's layers (stock transformers, ONNX exporters) need the original
module tree. Every Linear and Embedding of the variant, whatever pdo-hub made of it (int8 with either
activation scheme, a factorized pair, int8 rows), is still a linear map at the same module path, so
its effective weight is read by probing it: `W^T = f(I) - f(0)` and `b = f(0)`; an embedding's table
is `f(arange(V))`. The identity's rows quantize exactly under per-token and per-tensor activation
int8 (each row's largest value is 1), so the probe returns the int8 grid times its scales, with no
knowledge of how each layer stores it. Other modules (LayerNorm, ...) must be the variant's own type
and shape and are copied. A structural change the original tree cannot hold (pruned widths, a layer
that is no longer linear) raises `ExportError` naming the module.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdo_hub.core.errors import ExportError
from pdo_hub.optimizers.methods._fused_activation import layers_alone


@torch.no_grad()
def densify_into(variant: nn.Module, skeleton: nn.Module) -> dict[str, str]:
    """Fill `skeleton` (the original architecture) with the variant's effective float weights, in place.

    Returns:
        {module path: how it was read} for each Linear/Embedding: `float` (kept as is by pdo-hub) or
        `probed` (int8 or factorized in the variant): the caller re-quantizes the `probed` ones.

    Raises:
        ExportError: a module of the original is missing from the variant or has another shape or kind.
    """
    kinds: dict[str, str] = {}
    with layers_alone(variant):  # a layer fused with the GELU after it would read as Linear + GELU
        for path, target in skeleton.named_modules():
            own = {name: t for name, t in [*target.named_parameters(recurse=False), *target.named_buffers(recurse=False)]}
            if not own:
                continue
            source = _submodule(variant, path)
            if isinstance(target, nn.Linear):
                kinds[path] = _fill_linear(path, target, source)
            elif isinstance(target, nn.Embedding):
                kinds[path] = _fill_embedding(path, target, source)
            else:
                _copy_same(path, target, source, own)
    return kinds


def _submodule(variant: nn.Module, path: str) -> nn.Module:
    try:
        return variant.get_submodule(path)
    except AttributeError as err:
        raise ExportError(f"The variant has no module {path!r} of the original architecture: its structure changed "
                          "in a way this format cannot hold. Use the pdo-hub format.") from err


def _fill_linear(path: str, target: nn.Linear, source: nn.Module) -> str:
    if type(source) is nn.Linear:
        _check_shape(path, "weight", target.weight, source.weight)
        target.weight.copy_(source.weight)
        if target.bias is not None:
            target.bias.copy_(source.bias if source.bias is not None else torch.zeros_like(target.bias))
        return "float"
    n_in = target.in_features
    try:
        bias = source(torch.zeros(1, n_in)).float()
        weight_t = source(torch.eye(n_in)).float() - bias
    except (RuntimeError, TypeError, ValueError) as err:
        raise ExportError(f"{path!r} is a {type(source).__name__} that does not take {n_in} input features as the "
                          f"original Linear did ({err}); the variant was pruned or restructured there. Use the pdo-hub "
                          "format, or `pdo-hub export --format onnx`, which keeps the new widths.") from err
    _check_shape(path, "weight", target.weight, weight_t.t())
    target.weight.copy_(weight_t.t())
    if target.bias is not None:
        target.bias.copy_(bias[0])
    elif bias.abs().max() > 0:
        raise ExportError(f"{path!r} has a bias in the variant but none in the original architecture.")
    return "probed"


def _fill_embedding(path: str, target: nn.Embedding, source: nn.Module) -> str:
    if type(source) is nn.Embedding:
        _check_shape(path, "weight", target.weight, source.weight)
        target.weight.copy_(source.weight)
        return "float"
    try:
        table = source(torch.arange(target.num_embeddings)).float()
    except (RuntimeError, IndexError, TypeError) as err:
        raise ExportError(f"{path!r} ({type(source).__name__}) does not look up {target.num_embeddings} rows as the "
                          f"original did ({err}).") from err
    _check_shape(path, "weight", target.weight, table)
    target.weight.copy_(table)
    return "probed"


def _copy_same(path: str, target: nn.Module, source: nn.Module, own: dict[str, torch.Tensor]) -> None:
    if type(source) is not type(target):
        raise ExportError(f"{path!r} is a {type(source).__name__} in the variant, a {type(target).__name__} in the "
                          "original architecture: this format cannot hold that change. Use the pdo-hub format.")
    theirs = dict([*source.named_parameters(recurse=False), *source.named_buffers(recurse=False)])
    for name, tensor in own.items():
        if name not in theirs or theirs[name] is None:
            raise ExportError(f"{path}.{name} is missing from the variant.")
        _check_shape(path, name, tensor, theirs[name])
        tensor.copy_(theirs[name])


def _check_shape(path: str, name: str, target: torch.Tensor, value: torch.Tensor) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise ExportError(f"{path}.{name} is {tuple(value.shape)} in the variant but {tuple(target.shape)} in the "
                          "original architecture (pruned widths?): stock transformers cannot load that shape from this "
                          "config. Use the pdo-hub format, or `pdo-hub export --format onnx`, which keeps the new widths.")
