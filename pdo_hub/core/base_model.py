"""The seed's import path for the model manager: `pdo_hub.core.base_model.get_model_manager`, `BaseModel`.

A compatibility shim: the manager lives in `pdo_hub.manager` (layer 2) and is imported only when one of
these names is used, so importing `pdo_hub.core` never pulls in the Hub layer.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = ("get_model_manager", "reset_model_manager", "BaseModel", "ModelManager", "ModelMetadata", "ModelConfig",
            "ManagedModel", "ModelNotFoundError")

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from pdo_hub import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
