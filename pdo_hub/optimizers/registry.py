"""The method registry: one entry per method name, registered with a decorator.

A method does two things. `apply(model, ctx)` does the math and swaps modules, returning the model
(possibly a new object, e.g. a traced graph) and the recipe records that describe what it did.
`restore(model, record)` replays one record on a fresh un-optimized skeleton: it rebuilds structure
only, so that a strict safetensors load can then fill in the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn as nn

from ..core.errors import UnknownMethodError

if TYPE_CHECKING:
    from .context import MethodContext

KINDS = ("quantization", "factorization", "pruning")


class Method:
    """Base class of every optimization method.

    Attributes:
        name: the registry key, as written in configs and recipes (e.g. `dynamic`, `svd`).
        kind: one of `quantization`, `factorization`, `pruning`; decides the order in a pipeline
            (pruning, then factorization, then quantization) and the report label.
        cpu_only: True when the backend has no CUDA kernels; the optimizer skips it on CUDA and says so.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    cpu_only: ClassVar[bool] = False

    def apply(self, model: nn.Module, ctx: "MethodContext") -> tuple[nn.Module, list[dict[str, Any]]]:
        raise NotImplementedError

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The seed's name in `optimizations_applied` (e.g. `quantization_dynamic`)."""
        prefix = {"quantization": "quantization", "factorization": "tensor_factorization", "pruning": "structured_pruning"}[self.kind]
        return f"{prefix}_{self.name}"


_REGISTRY: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance under `cls.name`. A duplicate name raises."""
    if cls.kind not in KINDS:
        raise ValueError(f"Method '{cls.name}' has kind '{cls.kind}'; known kinds are {list(KINDS)}.")
    if cls.name in _REGISTRY:
        raise ValueError(f"A method named '{cls.name}' is already registered ({type(_REGISTRY[cls.name]).__name__}).")
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """Look a method up by name; unknown names fail listing the known ones."""
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"Unknown optimization method '{name}', known methods are {sorted(_REGISTRY)}.") from None


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def _load_builtin_methods() -> None:
    # Imported lazily so that importing the registry never pulls in every backend.
    from . import methods  # noqa: F401
