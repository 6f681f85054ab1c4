"""Helpers to find and swap submodules by dotted path, aliases included, and to count their work."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import RecipeError
from .inputs import call_model, to_device


def version_counter(tensor: torch.Tensor) -> int | None:
    """`tensor._version` (bumped by every in-place change), or None for inference-mode tensors, which keep none."""
    try:
        return tensor._version
    except RuntimeError:
        return None


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
    replace_modules(model, {path: new})


def replace_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """`replace_module` for several paths, walking the model once (a reload swaps dozens of layers).

    The paths must not be nested in one another (a swapped module's children are not looked up again).
    """
    olds = {path: get_module(model, path) for path in replacements}
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    for path, new in replacements.items():
        for name in names.get(id(olds[path]), [path]):
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


def multiply_adds(model: nn.Module, example) -> dict[int, int]:
    """id(module) -> multiply-adds of its forward(s) on `example`, for every Conv/Linear and RNN layer."""
    counts: dict[int, int] = {}

    def hook(module, _args, out):
        if isinstance(module, nn.RNNBase):  # every step multiplies by all weight matrices once
            steps = out[0].shape[:-1].numel() if isinstance(out, tuple) and isinstance(out[0], torch.Tensor) else 0
            weights = sum(p.numel() for name, p in module.named_parameters() if name.startswith("weight"))
            counts[id(module)] = counts.get(id(module), 0) + steps * weights
        elif isinstance(out, torch.Tensor):
            per_output = module.weight[0].numel()  # (in / groups) x kernel for a conv, in_features for a Linear
            counts[id(module)] = counts.get(id(module), 0) + out.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNNBase))]
    run_hooked(model, handles, [example])
    return counts


def run_hooked(model: nn.Module, handles: list, batches, device: torch.device | None = None) -> None:
    """Run `batches` through `model` without gradients for the hooks behind `handles`, then remove them (errors too)."""
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch if device is None else to_device(batch, device))
    finally:
        for handle in handles:
            handle.remove()
