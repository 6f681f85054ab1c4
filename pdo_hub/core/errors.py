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
