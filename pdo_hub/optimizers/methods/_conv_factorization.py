"""What `tucker` and `hlrtf` share: spatial convs get the tensor factorization, the rest activation-aware SVD.

A tensor method only has something to say about kh x kw kernels. Linear layers and 1x1 convs (plain
matrices) fall back to activation-aware SVD (`svd.py`), and every layer of either kind competes in one
global budget (`budget.allocate_options`) so the model as a whole reaches `ctx.target_ratio`.
Records carry `form` ("svd", "tucker" or "hlrtf") so `restore` rebuilds the right structure.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..budget import LayerOptions, allocate_options
from ..modules import get_module, match_dtype_device, replace_module
from ..norm_folding import fold_norms_after, restore_folded
from ..recovery import recover
from .svd import SVDFactorization, factorable_layers, layer_budget, svd_factorize, whitened_spectra

logger = logging.getLogger(__name__)

ConvOptions = Callable[[str, nn.Conv2d], tuple[LayerOptions, Any]]
ConvBuild = Callable[[nn.Module, str, nn.Conv2d, Any, Any], dict[str, Any]]


def grid(limit: int, points: int = 32) -> list[int]:
    """Up to `points` candidate ranks in 1..limit, denser at the low end where budgets usually land."""
    values = {max(1, round(limit * (i / points) ** 1.5)) for i in range(1, points + 1)}
    return sorted(values | {1, limit})


def apply_conv_factorization(
    model: nn.Module, ctx, name: str, conv_options: ConvOptions, conv_build: ConvBuild,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Factor the model's layers under the global budget; returns (model, records)."""
    layers = factorable_layers(model)
    convs = {path: m for path, m in layers.items() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)}
    matrices = {path: m for path, m in layers.items() if path not in convs}
    if not layers:
        ctx.note(logger, f"{name}: the model has no conv or Linear layer that can be factored.")
        return model, []
    analysed = {path: conv_options(path, m) for path, m in convs.items()}
    options = [entry[0] for entry in analysed.values()]
    decompositions, matrix_options = whitened_spectra(model, matrices, ctx)
    options += matrix_options
    budget = layer_budget(model, layers, ctx.target_ratio)
    choices = allocate_options(options, max(budget, 0))
    if budget <= 0 or not choices:
        ctx.note(logger, f"{name}: target ratio {ctx.target_ratio:.2f} cannot be reached by factoring this model's layers.")
    records = []
    for path, choice in choices.items():
        if path in convs:
            records.append(conv_build(model, path, convs[path], choice, analysed[path][1]))
    svd_records = svd_factorize(model, matrices, {p: c for p, c in choices.items() if p in matrices}, decompositions, name)
    records += [{**record, "form": "svd"} for record in svd_records]
    if records:
        recover(model, ctx, name, records)
        model = fold_norms_after(model, ctx, records)
    return model, records


def install_factored(model: nn.Module, path: str, conv: nn.Conv2d, new: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Fill `new`'s sub-convs (by name) with `weights`, keep the conv's bias on `new.last`, swap it in."""
    new = match_dtype_device(new, conv.weight)
    with torch.no_grad():
        for name, value in weights.items():
            target = getattr(new, name).weight
            target.copy_(value.reshape(target.shape))
        if conv.bias is not None:
            new.last.bias.copy_(conv.bias)
    replace_module(model, path, new)


def restore_conv_record(model: nn.Module, record: dict[str, Any], make_layer: Callable[[nn.Conv2d, dict[str, Any]], nn.Module]) -> nn.Module:
    """Replay one tucker/hlrtf record: an svd-form record (Linear / 1x1 fall-back) or the method's own layer."""
    if record.get("form") == "svd":
        return SVDFactorization().restore(model, record)
    conv = conv_to_restore(model, record)
    replace_module(model, record["module"], match_dtype_device(make_layer(conv, record), conv.weight))
    return restore_folded(model, record.get("folded_norms", []))


def conv_to_restore(model: nn.Module, record: dict[str, Any]) -> nn.Conv2d:
    module = get_module(model, record["module"])
    if type(module) is not nn.Conv2d:
        raise RecipeError(f"{record['method']}: '{record['module']}' is a {type(module).__name__}, the recipe expects a Conv2d.")
    return module
