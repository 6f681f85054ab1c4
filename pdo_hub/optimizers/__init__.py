"""The post-download optimizer: config-driven quantization, factorization and pruning of a model."""

from __future__ import annotations

from .optimizer import PostDownloadOptimizer, create_post_download_optimizer, optimize_downloaded_model
from .recipe import Recipe
from .registry import Method, available_methods, get_method, register_method
from .storage import load_optimized, save_optimized

__all__ = [
    "PostDownloadOptimizer",
    "create_post_download_optimizer",
    "optimize_downloaded_model",
    "Method",
    "register_method",
    "get_method",
    "available_methods",
    "Recipe",
    "save_optimized",
    "load_optimized",
]
