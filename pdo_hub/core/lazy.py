"""Package names that load their module on first use (PEP 562), so importing a package stays cheap.

`pdo_hub`, `pdo_hub.optimizers` and `pdo_hub.hub` export names whose modules import torch,
transformers or torchvision; `pdo-hub serve`, the cache commands and cached mirror runs import these
packages for their light modules and must not pay for the heavy ones.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving each of `names` ({name: module, absolute or relative to
    `package`}) by importing its module on first access."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return __getattr__
