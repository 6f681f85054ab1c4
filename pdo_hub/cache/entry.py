"""`CacheEntry`: a verified, complete entry of the optimized cache, as returned to callers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdo_hub.cache.keys import CacheKey
from pdo_hub.core.errors import CacheError


@dataclass(frozen=True)
class CacheEntry:
    """One complete entry of the optimized cache.

    The folder may be removed later by `OptimizedCache.remove`/`evict` (in this or another process);
    files already opened stay readable on POSIX systems.

    Attributes:
        key: The key the entry was stored under.
        path: The entry folder.
        manifest: The parsed `pdo_manifest.json` (key, `created_at`, `format_version`, `files` with the
            size and sha256 of each file, `total_bytes`).
    """

    key: CacheKey
    path: Path
    manifest: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def files(self) -> tuple[str, ...]:
        """Relative POSIX names of the entry's files (the manifest itself excluded), sorted."""
        return tuple(sorted(self.manifest["files"]))

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of the entry's files."""
        return sum(info["size"] for info in self.manifest["files"].values())

    @property
    def created_at(self) -> float:
        """When the entry was committed (seconds since the epoch)."""
        return float(self.manifest.get("created_at", 0.0))

    def file_path(self, name: str) -> Path:
        """Path of one of the entry's files.

        Args:
            name: Relative POSIX name as listed in `files`, e.g. `model.safetensors`.

        Raises:
            CacheError: when `name` is not a file of this entry (only listed names are served, so a
                caller's string can never reach outside the entry).
        """
        if name not in self.manifest["files"]:
            raise CacheError(f"{name!r} is not a file of cache entry {self.path}; its files are {list(self.files)}.")
        return self.path.joinpath(*name.split("/"))

    def read_json(self, name: str) -> Any:
        """Load one of the entry's JSON files (e.g. `pdo_recipe.json`, `optimization_report.json`).

        Raises:
            CacheError: when `name` is not a file of the entry, or cannot be read or parsed (remove the
                entry with `OptimizedCache.remove(key)` so that it is rebuilt).
        """
        path = self.file_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # also UnicodeDecodeError; JSON nested too deep
            raise CacheError(
                f"Cannot read {name!r} of cache entry {self.path}: {err}. Remove the entry so it is rebuilt."
            ) from err
