"""Per-call state shared by the hub flows and the interception layer."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

# True while pdo-hub itself loads an original model: a patched `from_pretrained` or torchvision builder
# must then behave exactly like the original, or building a variant would recurse into itself.
_BYPASS: ContextVar[bool] = ContextVar("pdo_hub_bypass", default=False)


def bypassing() -> bool:
    """Whether the current call comes from pdo-hub loading an original model."""
    return _BYPASS.get()


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """Let intercepted entry points act like the originals for the duration of the block."""
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)
