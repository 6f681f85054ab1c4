"""Shared test helpers: build a method context the way the optimizer does."""

from __future__ import annotations

import copy

import torch

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers.context import MethodContext
from pdo_hub.optimizers.inputs import synthesize_inputs
from pdo_hub.optimizers.recipe import Recipe
from pdo_hub.optimizers.registry import get_method


def make_context(model, example, **config_overrides) -> MethodContext:
    config = PostDownloadOptimizationConfig(**{"calibration_samples": 8, "benchmark_runs": 2, "benchmark_warmup": 1, **config_overrides})
    return MethodContext(
        config=config, example_inputs=example, calibration_inputs=synthesize_inputs(example, config.calibration_samples, 0),
        device=torch.device("cpu"), original_model=model, target_ratio=config.target_compression_ratio,
    )


def apply_method(name: str, model, example, **config_overrides):
    """Apply one registered method to a copy of `model`; returns (optimized model, records)."""
    optimized, records = get_method(name).apply(copy.deepcopy(model), make_context(model, example, **config_overrides))
    optimized.eval()
    optimized.pdo_recipe = Recipe(records)
    return optimized, records


def reload_identical(optimized, folder, skeleton, x: torch.Tensor):
    """Save `optimized` to `folder`, load it onto `skeleton`, assert it gives `optimized`'s exact outputs on `x`;
    returns the reloaded model."""
    from pdo_hub.optimizers import load_optimized, save_optimized

    save_optimized(optimized, folder)
    reloaded = load_optimized(folder, skeleton)
    with torch.inference_mode():
        assert torch.equal(reloaded(x), optimized(x))
    return reloaded
