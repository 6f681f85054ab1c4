"""Large embedding tables as int8 rows: shared by `dynamic` and `static`'s per-layer flow."""

from __future__ import annotations

import logging

import torch.nn as nn

from ...core.errors import RecipeError
from ..modules import get_module, replace_module, shared_parameter_ids
from ._int8_linear import Int8Embedding

logger = logging.getLogger(__name__)
EMBEDDING_MIN_PARAMS = 1 << 20  # small tables are not worth it


def quantize_embeddings(model: nn.Module, ctx, max_loss: float | None, method: str) -> list[str]:
    """Large, untied embedding tables become int8 rows, unless that alone raises the loss by more than `max_loss`."""
    shared = shared_parameter_ids(model)
    paths = [
        path for path, module in model.named_modules()
        if type(module) is nn.Embedding and module.weight.numel() >= EMBEDDING_MIN_PARAMS
        and module.max_norm is None and id(module.weight) not in shared
    ]
    if not paths:
        return []
    before = ctx.measure_loss(model) if max_loss is not None else None
    floats = {path: model.get_submodule(path) for path in paths}
    for path in paths:
        replace_module(model, path, Int8Embedding.from_float(floats[path]))
    if before is not None:
        after = ctx.measure_loss(model)
        if after - before > max_loss:
            for path in paths:
                replace_module(model, path, floats[path])
            ctx.note(logger, f"{method}: int8 embeddings raised the loss to {after:.4f}; kept them in float.")
            return []
    return paths


def restore_embeddings(model: nn.Module, paths: list[str], method: str) -> None:
    """Structure only: the int8 rows and scales come from the safetensors load."""
    for path in paths:
        module = get_module(model, path)
        if type(module) is not nn.Embedding:
            raise RecipeError(f"{method}: '{path}' is a {type(module).__name__}, the recipe expects an Embedding.")
        replace_module(model, path, Int8Embedding(module.num_embeddings, module.embedding_dim))
