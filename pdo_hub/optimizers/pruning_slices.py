"""Structured pruning as data: keep these output/input channels of these modules.

Applying and replaying a pruning use the same function, `slice_module`, so a reloaded model has
exactly the structure the optimizer produced: apply slices the real weights, `restore` slices a
fresh skeleton's (whatever they are) and the strict safetensors load fills in the values. Torch-
Pruning's dependency graph decides *which* channels go together; it is not needed to replay.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..core.errors import RecipeError

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
SLICEABLE = (nn.Conv1d, nn.Conv2d, nn.Linear) + NORMS


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def sliceable(module: nn.Module) -> bool:
    """Whether `slice_module` knows this layer (plain or depthwise convs, Linear, BN, 1-D LayerNorm)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 or is_depthwise(module)
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    if isinstance(module, nn.GroupNorm):
        return False  # channels per group would change; not supported
    return isinstance(module, SLICEABLE)


def channel_counts(module: nn.Module) -> tuple[int, int | None]:
    """(output channels, input channels or None for norms)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0], None
    return module.num_features, None


def _take(tensor: torch.Tensor | None, dim: int, keep: list[int] | None):
    if tensor is None or keep is None:
        return tensor
    return tensor.index_select(dim, torch.tensor(keep, dtype=torch.long, device=tensor.device)).clone()


def _set(module: nn.Module, name: str, value) -> None:
    current = getattr(module, name)
    if isinstance(current, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=current.requires_grad))
    elif current is not None:
        module.register_buffer(name, value)


def slice_module(module: nn.Module, out_keep: list[int] | None, in_keep: list[int] | None) -> None:
    """Keep only `out_keep` output and `in_keep` input channels of `module`, in place (None: keep all)."""
    if not sliceable(module):
        raise RecipeError(f"prune: cannot slice a {type(module).__name__}.")
    out_n, in_n = channel_counts(module)
    for keep, limit in ((out_keep, out_n), (in_keep, in_n)):
        # Distinct indices below the channel count: a replayed record may come from a downloaded file, and
        # repeated indices would let a few bytes of JSON grow a layer without bound.
        if keep is not None and not (isinstance(keep, list) and keep and limit is not None
                                     and all(type(i) is int and 0 <= i < limit for i in keep) and len(set(keep)) == len(keep)):
            raise RecipeError(f"prune: kept channels {str(keep)[:40]}... are not distinct channels of a "
                              f"{type(module).__name__} with {limit} channels.")
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        if is_depthwise(module):
            keep = out_keep if out_keep is not None else in_keep
            out_keep = in_keep = None
            _set(module, "weight", _take(module.weight, 0, keep))
            _set(module, "bias", _take(module.bias, 0, keep))
            module.in_channels = module.out_channels = module.groups = len(keep)
            return
        _set(module, "weight", _take(_take(module.weight, 0, out_keep), 1, in_keep))
        _set(module, "bias", _take(module.bias, 0, out_keep))
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape[:2]
        else:
            module.out_channels, module.in_channels = module.weight.shape[:2]
        return
    keep = out_keep if out_keep is not None else in_keep
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            _set(module, name, _take(getattr(module, name), 0, keep))
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = (len(keep),)
    else:
        module.num_features = len(keep)


def replay(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    """Apply a prune record's {path: {"type", "out", "in"}} to `model`."""
    for path, entry in modules.items():
        try:
            module = model.get_submodule(path)
        except AttributeError as err:
            raise RecipeError(f"prune: the model has no submodule '{path}': the recipe was made for another architecture.") from err
        if type(module).__name__ != entry["type"]:
            raise RecipeError(f"prune: '{path}' is a {type(module).__name__}, the recipe expects a {entry['type']}.")
        slice_module(module, entry.get("out"), entry.get("in"))
    return model
