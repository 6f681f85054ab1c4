"""Settings read from the environment at call time (never at import), so tests can redirect them."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError
from .sizes import parse_size

_TRUE = {"1", "true", "yes", "on"}


def user_cache_home() -> Path:
    """`$XDG_CACHE_HOME`, else `~/.cache`. An empty value counts as unset (the XDG rule): read as a
    path it would put pdo-hub's caches in the current directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()


def cache_dir() -> Path:
    """Root of the optimized cache: `$PDO_HUB_CACHE`, default `~/.cache/pdo_hub`."""
    value = os.environ.get("PDO_HUB_CACHE")
    if value:
        return Path(value).expanduser()
    return user_cache_home() / "pdo_hub"


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
    seconds = _seconds("PDO_HUB_LOCK_TIMEOUT", "use a number of seconds (negative waits forever)")
    return DEFAULT_LOCK_TIMEOUT if seconds is None else seconds


def _seconds(name: str, advice: str) -> float | None:
    """`$name` as a number of seconds, None when unset; NaN is refused (neither a wait nor "forever")."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if seconds != seconds:
        raise ConfigError(f"{name}={value!r}: {advice}.")
    return seconds


def shared_cache_url() -> str | None:
    """URL of the shared cache tier from `$PDO_HUB_SHARED_CACHE` (e.g. `s3://bucket/prefix`), or None."""
    value = os.environ.get("PDO_HUB_SHARED_CACHE", "").strip()
    return value or None


#: Default lifetime of a shared-tier build lease without renewal (its holder renews it every third).
DEFAULT_LEASE_SECONDS = 60.0
#: Default period a serve replica reuses its listing of a repo on the shared tier.
DEFAULT_SHARED_REFRESH_SECONDS = 2.0


def shared_lease_seconds() -> float:
    """Seconds after which a build lease that is not renewed counts as abandoned: `$PDO_HUB_SHARED_LEASE_SECONDS`.

    Raises:
        ConfigError: when the value is not a positive number.
    """
    advice = "use a positive number of seconds"
    seconds = _seconds("PDO_HUB_SHARED_LEASE_SECONDS", advice)
    if seconds is None:
        return DEFAULT_LEASE_SECONDS
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"PDO_HUB_SHARED_LEASE_SECONDS={seconds!r}: {advice}.")
    return seconds


def shared_refresh_seconds() -> float:
    """How long a `pdo-hub serve` replica reuses its listing of a repo on the shared tier:
    `$PDO_HUB_SHARED_REFRESH_SECONDS` (default 2; 0 lists on every request).

    Each period costs one LIST request per repo asked for: at 2 s, 10 replicas serving 1,000 busy repos
    make about 5,000 a second (docs/scaling.md). A longer period only delays when a variant built
    elsewhere is first served.

    Raises:
        ConfigError: when the value is not a number of seconds, 0 or more.
    """
    advice = "use a number of seconds, 0 or more"
    seconds = _seconds("PDO_HUB_SHARED_REFRESH_SECONDS", advice)
    if seconds is None:
        return DEFAULT_SHARED_REFRESH_SECONDS
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"PDO_HUB_SHARED_REFRESH_SECONDS={seconds!r}: {advice}.")
    return seconds


def offline() -> bool:
    """True when `PDO_HUB_OFFLINE` or `HF_HUB_OFFLINE` asks for no network access."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("PDO_HUB_OFFLINE", "HF_HUB_OFFLINE"))


def verbosity() -> str | None:
    """Log level name from `PDO_HUB_VERBOSITY` (e.g. `debug`, `info`), or None for the default (warnings)."""
    value = os.environ.get("PDO_HUB_VERBOSITY")
    return value.strip().upper() if value else None
