"""Every error pdo-hub raises.

One root class (`PdoHubError`) so callers can catch everything from pdo-hub at once, and stdlib bases
so they can also catch by the usual type (a bad config is a `ValueError`, a missing cache entry is a
`FileNotFoundError`). Messages say what happened and what to do next.
"""

from __future__ import annotations


class PdoHubError(Exception):
    """Root of every pdo-hub error."""


class ConfigError(PdoHubError, ValueError):
    """A configuration key has an invalid value, or an unknown key was given."""


class UnknownMethodError(PdoHubError, KeyError):
    """A method name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class RecipeError(PdoHubError, ValueError):
    """A recipe cannot be replayed: unknown format version, unknown method, or inconsistent content."""


class UnsupportedCpuError(RecipeError):
    """An int8 variant's kernels assume an instruction set (VNNI) this CPU does not have: its int8 layers
    would saturate here and give wrong outputs. The message names what is missing and how to get a variant
    built for this CPU."""


class StorageError(PdoHubError, OSError):
    """Saved optimized weights are missing, damaged or do not match the recipe."""


class OptimizationError(PdoHubError, RuntimeError):
    """An optimization method failed on a model."""


class CacheError(PdoHubError, OSError):
    """The optimized cache cannot be read or written."""


class OfflineCacheMissError(PdoHubError, FileNotFoundError):
    """Offline mode is on and the optimized model is not in the cache."""


class InvalidRepoIdError(PdoHubError, ValueError):
    """A repository id or path is not valid (or tries to escape the cache folder)."""


class PushError(PdoHubError, OSError):
    """Publishing a variant to the Hub failed (credentials, permissions, network, or a refused commit)."""


class ClusterError(PdoHubError, ConnectionError):
    """The Ray cluster `mirror --ray` was given cannot be reached or joined; the message names the address
    and how to start or find a cluster."""


class IncompatibleCacheEntryError(CacheError):
    """A cache entry is intact but this install cannot use it: it was written by a newer pdo-hub, or its
    recipe needs a method or an optional package that is not installed. The entry is left in place; the
    message says what to upgrade or install."""


class DamagedCacheEntryError(OfflineCacheMissError):
    """Offline, a cache entry failed its integrity check or could not be loaded. It is left untouched
    (nothing is deleted or moved offline); the message says how to rebuild or restore it."""


class CacheLockTimeoutError(CacheError, TimeoutError):
    """Waiting for another process's build of the same cache entry took longer than the lock timeout
    (`PDO_HUB_LOCK_TIMEOUT`); the message names the process holding the lock."""


class FetchError(PdoHubError, ConnectionError):
    """Downloading from the Hub kept failing (server errors, rate limits, timeouts, cut connections, files
    that do not match the Hub's sizes and hashes) through every bounded retry. Nothing partial was kept:
    the message names what failed, how, after how many attempts, and what to do."""


class ExportError(PdoHubError, ValueError):
    """A variant cannot be written in the asked format (its structure does not fit it, or a tool is missing)."""
