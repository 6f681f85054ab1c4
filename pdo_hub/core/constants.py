"""Settings read from the environment at call time (never at import), so tests can redirect them."""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Root of the optimized cache: `$PDO_HUB_CACHE`, default `~/.cache/pdo_hub`."""
    value = os.environ.get("PDO_HUB_CACHE")
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pdo_hub"


def offline() -> bool:
    """True when `PDO_HUB_OFFLINE` or `HF_HUB_OFFLINE` asks for no network access."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("PDO_HUB_OFFLINE", "HF_HUB_OFFLINE"))


def verbosity() -> str | None:
    """Log level name from `PDO_HUB_VERBOSITY` (e.g. `debug`, `info`), or None for the default (warnings)."""
    value = os.environ.get("PDO_HUB_VERBOSITY")
    return value.strip().upper() if value else None
