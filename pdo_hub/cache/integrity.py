"""Checking entry folders against their manifests: one entry on lookup, or the whole cache on demand.

`examine` is the single judgement of an entry folder: usable, damaged (safe to remove: it will be
rebuilt), or unusable but not ours to remove (written by a newer pdo-hub, or another key's entry).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import QUARANTINE_DIR, entry_dir
from pdo_hub.cache.manifest import ManifestError, find_problems, read_manifest
from pdo_hub.core.errors import CacheError, InvalidRepoIdError


@dataclass(frozen=True)
class Verdict:
    """What `examine` found in one entry folder.

    Attributes:
        path: The entry folder.
        entry: The entry when it is usable, else None.
        problems: What is wrong (empty when usable).
        damaged: True when the folder is broken and may be removed; False for a usable entry or one that
            must be left alone (newer format, another key's entry).
        key: The key its manifest names, when readable.
    """

    path: Path
    entry: CacheEntry | None
    problems: tuple[str, ...] = ()
    damaged: bool = False
    key: CacheKey | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


def examine(root: Path, path: Path, check_hashes: bool, key: CacheKey | None = None) -> Verdict:
    """Check one entry folder: manifest, format version, key, and every file's size (and sha256).

    Args:
        root: The cache root.
        path: The entry folder.
        check_hashes: Recompute every sha256 (sizes are always checked).
        key: The key the caller expects here. Without it, the manifest's own key must map to `path`.
    """
    if path.is_symlink() or not path.is_dir():
        return Verdict(path, None, ("not a folder",), True)
    try:
        manifest = read_manifest(path)
    except ManifestError as err:
        return Verdict(path, None, (str(err),), True)
    if manifest["format_version"] > CACHE_FORMAT_VERSION:
        return Verdict(path, None, (
            f"written by a newer pdo-hub (format {manifest['format_version']}, this one reads up to "
            f"{CACHE_FORMAT_VERSION}); upgrade pdo-hub to use it",
        ))
    try:
        stored = CacheKey.from_dict(manifest["key"])
    except InvalidRepoIdError as err:
        return Verdict(path, None, (f"its manifest holds an invalid key: {err}",), True)
    if key is not None and stored != key:
        # Only the config hash prefix is in the folder name: a different full key is another entry.
        return Verdict(path, None, (f"it belongs to another key ({stored})",), key=stored)
    if key is None and entry_dir(root, stored) != path:
        return Verdict(path, None, (f"its manifest names the entry at {entry_dir(root, stored)}",), True, stored)
    problems = find_problems(path, manifest, check_hashes)
    if problems:
        return Verdict(path, None, tuple(problems), True, stored)
    return Verdict(path, CacheEntry(stored, path, manifest), key=stored)


def quarantine(root: Path, path: Path) -> Path:
    """Move a damaged entry folder out of the cache into `.quarantine/` for inspection; returns where.

    Raises:
        CacheError: when it cannot be moved (nothing is deleted then).
    """
    target = root / QUARANTINE_DIR / path.parent.parent.name / f"{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)  # one rename: readers see the entry or nothing, never half of it
    except OSError as err:
        raise CacheError(f"Cannot move {path} to {target}: {err}. Remove it with `pdo-hub cache verify --remove`.") from err
    return target
