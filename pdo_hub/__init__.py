"""pdo-hub: a Hugging Face Hub-integrated model mirror that optimizes models after download."""

from __future__ import annotations

from .core.version import __version__
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

__all__ = [
    "__version__",
    "PostDownloadOptimizationConfig",
    "load_config",
    "PdoHubError",
    "ConfigError",
    "UnknownMethodError",
    "RecipeError",
    "StorageError",
    "OptimizationError",
    "CacheError",
    "OfflineCacheMissError",
]

# --- Lazy public API: `import pdo_hub` stays light (no torch), so `pdo-hub serve`, `cache` and cached
# mirror runs never pay torch's import and memory; torch, transformers, torchvision load on first use.
from pdo_hub.core.lazy import lazy_attributes  # noqa: E402

_LAZY = {
    "save_optimized": "pdo_hub.optimizers.storage",
    "load_optimized": "pdo_hub.optimizers.storage",
    "from_pretrained": "pdo_hub.api",
    "get_model": "pdo_hub.api",
    "intercept": "pdo_hub.api",
    "AutoModel": "pdo_hub.api",
    "AutoModelForSequenceClassification": "pdo_hub.api",
    "AutoModelForCausalLM": "pdo_hub.api",
    "AutoModelForMaskedLM": "pdo_hub.api",
    "AutoModelForTokenClassification": "pdo_hub.api",
    "AutoModelForQuestionAnswering": "pdo_hub.api",
    "AutoModelForSeq2SeqLM": "pdo_hub.api",
    "AutoModelForImageClassification": "pdo_hub.api",
    "AutoModelForMultipleChoice": "pdo_hub.api",
    "load_exported": "pdo_hub.export.loading",
    "get_model_manager": "pdo_hub.manager",
    "BaseModel": "pdo_hub.manager",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
__all__ += list(_LAZY)
