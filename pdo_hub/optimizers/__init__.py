"""The post-download optimizer: config-driven quantization, factorization and pruning of a model.

The names below load on first use: torch-free modules of this package (the chart, the recipe format)
are imported by `pdo-hub serve` and the cache commands, which must not pay torch's import and memory.
"""

from __future__ import annotations

from pdo_hub.core.lazy import lazy_attributes

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
__getattr__ = lazy_attributes(__name__, _LAZY)