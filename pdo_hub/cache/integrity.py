"""Checking entry folders against their manifests: one entry on lookup, or the whole cache on demand.

`examine` is the single judgement of an entry folder: usable, damaged (to be set aside and rebuilt), or
unusable but not ours to touch (written by a newer pdo-hub, or another key's entry). How much it reads is
the caller's choice (`Check`): sizes only, only the files changed since they were last verified (what
every cache hit does), or every byte.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pdo_hub.cache._verified import identity, read_stamp, write_stamp
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import QUARANTINE_DIR, entry_dir
from pdo_hub.cache.manifest import MANIFEST_NAME, ManifestError, find_problems, read_manifest
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import CacheError, InvalidRepoIdError


class Check(Enum):
    """How thoroughly `examine` compares files with the manifest."""

    SIZES = "sizes"  #: presence and size only (cheap; listing, selecting)
    CHANGED = "changed"  #: sha256 of the files whose identity changed since their last check (every hit)
    FULL = "full"  #: sha256 of every file (`verify=True`, `pdo-hub cache verify`, before replacing a folder)


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


def examine(root: Path, path: Path, check: Check, key: CacheKey | None = None) -> Verdict:
    """Check one entry folder: manifest, format version, key, and every file against the manifest.

    With `Check.CHANGED` or `Check.FULL`, the identities of the files found intact are recorded in the
    entry's stamp, so the next `Check.CHANGED` only stats them (see `pdo_hub.cache._verified`).

    Args:
        root: The cache root.
        path: The entry folder.
        check: How much to read (see `Check`).
        key: The key the caller expects here. Without it, the manifest's own key must map to `path`.
    """
    if path.is_symlink() or not path.is_dir():
        return Verdict(path, None, ("not a folder",), True)
    manifest_identity = identity(path / MANIFEST_NAME)  # before reading: a later edit then invalidates the stamp
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
    verified = {} if check is Check.FULL else read_stamp(path, manifest_identity) if check is Check.CHANGED else None
    known = dict(verified or {})
    problems = find_problems(path, manifest, check is not Check.SIZES, verified)
    if problems:
        return Verdict(path, None, tuple(problems), True, stored)
    if verified is not None and verified != known:
        write_stamp(path, manifest_identity, verified)
    return Verdict(path, CacheEntry(stored, path, manifest), key=stored)


def quarantine(root: Path, path: Path) -> Path:
    """Move a damaged entry folder out of the cache into `.quarantine/` for inspection; returns where.

    Raises:
        CacheError: when it cannot be moved (nothing is deleted then).
    """
    target = root / QUARANTINE_DIR / path.parent.parent.name / f"{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        crashpoint("quarantine.moving")
        os.rename(path, target)  # one rename: readers see the entry or nothing, never half of it
        crashpoint("quarantine.moved")
    except OSError as err:
        raise CacheError(f"Cannot move {path} to {target}: {err}. Remove it with `pdo-hub cache verify --remove`.") from err
    return target
