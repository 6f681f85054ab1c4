"""The seed's model manager: `get_model_manager()`, `download_and_load_model`, `BaseModel`.

Layer 2. Downloads go through the Hub layer, so every model the manager loads is optimized once,
cached, and reused offline. Import path kept from the seed: `pdo_hub.core.base_model`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError, PdoHubError
from pdo_hub.hub.local import load_local
from pdo_hub.hub.torchvision_models import get_model
from pdo_hub.hub.transformers_models import from_pretrained

logger = logging.getLogger(__name__)

SOURCES = ("torchvision", "huggingface", "local")


class ModelNotFoundError(PdoHubError, KeyError):
    """No model is registered under the name asked for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class ModelConfig:
    """Per-model settings; `post_download_optimization` is the seed's optimization config."""

    post_download_optimization: PostDownloadOptimizationConfig = field(default_factory=PostDownloadOptimizationConfig)


@dataclass
class ModelMetadata:
    """Where a managed model came from and what was done to it (`optimization_report` is the seed's report)."""

    name: str
    source: str | None = None
    model_id: str | None = None
    revision: str | None = None
    cache_path: str | None = None
    cache_status: str | None = None
    config_hash: str | None = None
    optimization_report: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)


class BaseModel:
    """A named model with its config, logger and metadata; subclass it and implement `load_model`.

    Example (the seed's custom model class):
        >>> class MyModel(BaseModel):
        ...     def load_model(self, model_path):
        ...         self.model = build_and_load(model_path)
        ...         if self.config.post_download_optimization.enable_optimization:
        ...             self.model, report = optimize_downloaded_model(self.model, "my_model",
        ...                                                            config=self.config.post_download_optimization)
    """

    def __init__(self, name: str | None = None, config: ModelConfig | PostDownloadOptimizationConfig | dict | str | None = None) -> None:
        self.name = name or type(self).__name__
        self.config = config if isinstance(config, ModelConfig) else ModelConfig(load_config(config))
        self.logger = logging.getLogger(f"{__name__}.{self.name}")
        self.model: nn.Module | None = None
        self.metadata = ModelMetadata(name=self.name)

    def load_model(self, model_path: str | Path) -> None:
        """Load `self.model` from `model_path` (to implement in subclasses)."""
        raise NotImplementedError(f"{type(self).__name__}.load_model is not implemented: subclass BaseModel and define it.")

    def predict(self, inputs: Any) -> Any:
        """Run the model in inference mode on a tensor, a tuple, or a dict of tensors."""
        if self.model is None:
            raise PdoHubError(f"Model {self.name!r} is not loaded: call load_model first.")
        with torch.inference_mode():
            if isinstance(inputs, dict):
                return self.model(**inputs)
            if isinstance(inputs, (tuple, list)):
                return self.model(*inputs)
            return self.model(inputs)

    __call__ = predict


class ManagedModel(BaseModel):
    """A model the manager downloaded: `.model` is the optimized module, `.metadata` its record."""

    def load_model(self, model_path: str | Path) -> None:
        raise PdoHubError("Managed models are loaded by ModelManager.download_and_load_model.")


class ModelManager:
    """Downloads, optimizes (through the cache) and keeps named models.

    Args:
        config: Default optimization config for every download.
    """

    def __init__(self, config: PostDownloadOptimizationConfig | dict | str | None = None) -> None:
        self.config = ModelConfig(load_config(config))
        self._models: dict[str, BaseModel] = {}
        self._lock = threading.Lock()

    def download_and_load_model(self, source: str, model_id: str, name: str | None = None, *,
                                config: PostDownloadOptimizationConfig | dict | str | None = None, revision: str | None = None,
                                weights: Any = "DEFAULT", architecture: Any = None, auto_class: str = "AutoModel",
                                local_files_only: bool = False, calibration_data: Any = None,
                                eval_fn: Callable[[Any], float] | None = None, **kwargs: Any) -> ManagedModel:
        """Fetch `model_id` from `source`, optimize it (or reuse the cached variant) and register it as `name`.

        Args:
            source: `torchvision` (a model name), `huggingface` (a repo id) or `local` (a path: `.pt`/`.pth`
                state dict, `.safetensors`, or a transformers save folder).
            model_id: What to load from the source.
            name: Registry name (default: `model_id`).
            config: Optimization config for this model (default: the manager's).
            revision: Hub revision (huggingface only).
            weights: torchvision weights (torchvision only; default `DEFAULT`).
            architecture: For local state dicts: torchvision model name or callable returning the module.
            auto_class: transformers Auto class (huggingface and local folders).
            local_files_only: No network and no optimization: cached variants only.
            calibration_data: Inputs from your domain to calibrate and judge candidates on (images or tensor
                batches for vision models, sentences or tokenized batches for text models); without it,
                vision models with BatchNorm are calibrated on inputs distilled from its statistics.
            eval_fn: Task metric `eval_fn(model) -> accuracy in [0, 1]` on your labelled data.
            **kwargs: Passed to the source's loader.

        Returns:
            The registered model (`.model`, `.metadata.optimization_report`).
        """
        opt_config = load_config(config) if config is not None else self.config.post_download_optimization
        name = name or str(model_id)
        judging = {"calibration_data": calibration_data, "eval_fn": eval_fn}
        if source == "torchvision":
            model = get_model(model_id, weights, config=opt_config, local_files_only=local_files_only, **judging, **kwargs)
        elif source == "huggingface":
            model = from_pretrained(model_id, revision=revision, config=opt_config, auto_class=auto_class,
                                    local_files_only=local_files_only, **judging, **kwargs)
        elif source == "local":
            model = load_local(model_id, architecture=architecture, auto_class=auto_class, config=opt_config,
                               local_files_only=local_files_only, **judging)
        else:
            raise ConfigError(f"source={source!r} is not supported. Allowed values: {', '.join(SOURCES)}.")
        managed = ManagedModel(name, ModelConfig(opt_config))
        managed.model = model
        report = dict(getattr(model, "pdo_report", {}) or {})
        cache_path = getattr(model, "pdo_cache_path", None)
        managed.metadata = ModelMetadata(
            name=name, source=source, model_id=str(model_id), revision=_revision_of(cache_path),
            cache_path=str(cache_path) if cache_path else None, cache_status=getattr(model, "pdo_cache_status", None),
            config_hash=opt_config.config_hash(), optimization_report=report,
        )
        self.register_model(name, managed)
        managed.logger.info("Loaded %s from %s (%s): %s", model_id, source, managed.metadata.cache_status,
                            report.get("optimizations_applied"))
        return managed

    def register_model(self, name: str, model: BaseModel) -> None:
        """Keep `model` under `name` (replacing any model of that name)."""
        with self._lock:
            self._models[name] = model

    def get_model(self, name: str) -> BaseModel:
        """The model registered as `name`.

        Raises:
            ModelNotFoundError: listing the registered names.
        """
        with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(
                    f"No model named {name!r}; loaded models: {sorted(self._models)}. Load it with download_and_load_model."
                )
            return self._models[name]

    def list_models(self) -> list[str]:
        """Names of the registered models, sorted."""
        with self._lock:
            return sorted(self._models)

    def unload_model(self, name: str) -> bool:
        """Forget the model `name`; True when there was one."""
        with self._lock:
            return self._models.pop(name, None) is not None


def _revision_of(cache_path: Any) -> str | None:
    # Entry folders are named `{revision}--{config hash prefix}--v{format}`.
    return Path(cache_path).name.split("--")[0] if cache_path else None


_MANAGER: ModelManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_model_manager(config: PostDownloadOptimizationConfig | dict | str | None = None) -> ModelManager:
    """The process-wide `ModelManager` (created on first call; `config` applies only then)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = ModelManager(config)
        elif config is not None:
            logger.warning("get_model_manager(config=...) ignored: the manager already exists.")
        return _MANAGER


def reset_model_manager() -> None:
    """Forget the process-wide manager (its models included); the next call makes a new one."""
    global _MANAGER
    with _MANAGER_LOCK:
        _MANAGER = None
