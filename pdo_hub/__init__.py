"""pdo-hub: a Hugging Face Hub-integrated model mirror that optimizes models after download."""

from __future__ import annotations

__version__ = "0.1.0"

from .core.logs import configure_from_env as _configure_logging  # noqa: E402

_configure_logging()

from .core.config import PostDownloadOptimizationConfig, load_config  # noqa: E402
from .core.errors import (  # noqa: E402
    CacheError,
    ConfigError,
    OfflineCacheMissError,
    OptimizationError,
    PdoHubError,
    RecipeError,
    StorageError,
    UnknownMethodError,
)
from .optimizers.storage import load_optimized, save_optimized  # noqa: E402

__all__ = [
    "__version__",
    "PostDownloadOptimizationConfig",
    "load_config",
    "save_optimized",
    "load_optimized",
    "PdoHubError",
    "ConfigError",
    "UnknownMethodError",
    "RecipeError",
    "StorageError",
    "OptimizationError",
    "CacheError",
    "OfflineCacheMissError",
]
