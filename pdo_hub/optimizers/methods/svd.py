"""`svd`: truncated SVD of Linear and Conv2d weights into two thinner layers.

A Linear W (out x in) becomes down = sqrt(S_r) V_r^T and up = U_r sqrt(S_r); a Conv2d kernel is read
as an (out x in*kh*kw) matrix, giving a kh x kw conv to r channels followed by a 1x1 conv. Ranks come
from the global budget (`budget.allocate_ranks`) so the whole model reaches `ctx.target_ratio` of its
size; tied weights and grouped convs are left alone, as are layers where a factorization would not
store fewer parameters.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..budget import LayerSpectrum, allocate_ranks
from ..layers import LowRankConv2d, LowRankLinear
from ..modules import get_module, match_dtype_device, replace_module, shared_parameter_ids
from ..registry import Method, register_method
from ..sizing import state_bytes

logger = logging.getLogger(__name__)


def factorable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and plain (ungrouped) Conv2d layers whose weights are not tied to another module."""
    shared = shared_parameter_ids(model)
    layers = {}
    for path, module in model.named_modules():
        if type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1):
            if id(module.weight) not in shared and path:
                layers[path] = module
    return layers


def weight_matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().float().reshape(module.weight.shape[0], -1)


def build_factorized(module: nn.Module, rank: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        new = LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None)
    else:
        new = LowRankConv2d(module, rank)
    return match_dtype_device(new, module.weight)


@register_method
class SVDFactorization(Method):
    name = "svd"
    kind = "factorization"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        layers = factorable_layers(model)
        if not layers:
            ctx.note(logger, "svd: the model has no Linear or Conv2d layer that can be factored.")
            return model, []
        decompositions = {path: torch.linalg.svd(weight_matrix(m), full_matrices=False) for path, m in layers.items()}
        element = {path: m.weight.element_size() for path, m in layers.items()}
        total_bytes = state_bytes(model)
        dense_bytes = sum(m.weight.numel() * element[p] for p, m in layers.items())
        budget_bytes = ctx.target_ratio * total_bytes - (total_bytes - dense_bytes)
        itemsize = max(element.values())
        spectra = [
            LayerSpectrum(path, m.weight.numel(), sum(weight_matrix(m).shape), decompositions[path].S.square())
            for path, m in layers.items()
        ]
        ranks = allocate_ranks(spectra, int(budget_bytes // itemsize))
        if budget_bytes <= 0 or not ranks:
            ctx.note(logger, f"svd: target ratio {ctx.target_ratio:.2f} cannot be reached by factoring this model's layers.")
        records = []
        for path, rank in ranks.items():
            module = layers[path]
            U, S, Vh = decompositions[path]
            root = S[:rank].sqrt()
            new = build_factorized(module, rank)
            with torch.no_grad():
                new.down.weight.copy_((root[:, None] * Vh[:rank]).reshape(new.down.weight.shape))
                new.up.weight.copy_((U[:, :rank] * root).reshape(new.up.weight.shape))
                if module.bias is not None:
                    new.up.bias.copy_(module.bias)
            kept = float(S[:rank].square().sum() / S.square().sum())
            logger.debug("svd: %s rank %d/%d keeps %.4f of the energy", path, rank, S.numel(), kept)
            replace_module(model, path, new)
            records.append({"method": self.name, "module": path, "layer": type(module).__name__, "rank": rank, "energy_kept": round(kept, 6)})
        return model, records

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        module = get_module(model, record["module"])
        if type(module).__name__ != record["layer"]:
            raise RecipeError(f"svd: '{record['module']}' is a {type(module).__name__}, the recipe expects a {record['layer']}.")
        replace_module(model, record["module"], build_factorized(module, int(record["rank"])))
        return model
