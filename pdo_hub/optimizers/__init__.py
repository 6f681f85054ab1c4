"""The post-download optimizer: config-driven quantization, factorization and pruning of a model.

The names below load on first use: torch-free modules of this package (the chart, the recipe format)
are imported by `pdo-hub serve` and the cache commands, which must not pay torch's import and memory.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "PostDownloadOptimizer": ".optimizer",
    "create_post_download_optimizer": ".optimizer",
    "optimize_downloaded_model": ".optimizer",
    "Method": ".registry",
    "register_method": ".registry",
    "get_method": ".registry",
    "available_methods": ".registry",
    "Recipe": ".recipe",
    "save_optimized": ".storage",
    "load_optimized": ".storage",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pdo_hub.optimizers' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
