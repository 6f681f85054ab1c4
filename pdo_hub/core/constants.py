"""Settings read from the environment at call time (never at import), so tests can redirect them."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError
from .sizes import parse_size

_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Root of the optimized cache: `$PDO_HUB_CACHE`, default `~/.cache/pdo_hub`."""
    value = os.environ.get("PDO_HUB_CACHE")
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pdo_hub"


def cache_max_size() -> int | None:
    """Size limit of the optimized cache from `$PDO_HUB_CACHE_MAX_SIZE` (e.g. `20GB`), or None for no limit.

    With a limit, every commit evicts least-recently-used entries down to it (never the new entry).

    Raises:
        ConfigError: when the value is not a size (the message names the variable).
    """
    value = os.environ.get("PDO_HUB_CACHE_MAX_SIZE", "").strip()
    return parse_size(value, "PDO_HUB_CACHE_MAX_SIZE") if value else None


#: Default wait for another process's build of the same entry: an optimization can take minutes.
DEFAULT_LOCK_TIMEOUT = 1800.0


def lock_timeout() -> float:
    """Seconds to wait for the lock of an entry another process is building: `$PDO_HUB_LOCK_TIMEOUT`.

    Default 1800; a negative value waits forever (a hung build then blocks every other process).

    Raises:
        ConfigError: when the value is not a number (the message names the variable).
    """
    value = os.environ.get("PDO_HUB_LOCK_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if seconds != seconds:  # NaN: neither a wait nor "forever"
        raise ConfigError(f"PDO_HUB_LOCK_TIMEOUT={value!r}: use a number of seconds (negative waits forever).")
    return seconds


def offline() -> bool:
    """True when `PDO_HUB_OFFLINE` or `HF_HUB_OFFLINE` asks for no network access."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("PDO_HUB_OFFLINE", "HF_HUB_OFFLINE"))


def verbosity() -> str | None:
    """Log level name from `PDO_HUB_VERBOSITY` (e.g. `debug`, `info`), or None for the default (warnings)."""
    value = os.environ.get("PDO_HUB_VERBOSITY")
    return value.strip().upper() if value else None
