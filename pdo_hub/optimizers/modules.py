"""Helpers to find and swap submodules by dotted path, aliases included."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import RecipeError


def get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise RecipeError(f"The model has no submodule '{path}': the recipe was made for another architecture.") from err


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` where `path` points, and everywhere else the same module object is reachable.

    A module registered under two names (a shared block) must stay shared after the swap, or the
    two names would diverge silently.
    """
    old = get_module(model, path)
    targets = [name for name, module in model.named_modules(remove_duplicate=False) if module is old and name]
    for name in targets or [path]:
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, new)


def shared_parameter_ids(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one module (tied weights)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(id(module))
    return {pid for pid, mods in owners.items() if len(mods) > 1}


def model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def match_dtype_device(new: nn.Module, like: torch.Tensor) -> nn.Module:
    return new.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
