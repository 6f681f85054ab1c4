"""Putting a complete temp folder into place as an entry: one atomic rename, with a concurrent winner kept."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pdo_hub.cache._files import touch
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.integrity import Check, examine, quarantine
from pdo_hub.cache.keys import CacheKey
from pdo_hub.cache.layout import entry_dir
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import CacheError

logger = logging.getLogger(__name__)

# How often to retry when a damaged folder sits where the entry must go.
_PLACE_ATTEMPTS = 3


def place(root: Path, key: CacheKey, tmp: Path, manifest: dict) -> CacheEntry:
    """Rename `tmp` (holding a complete entry and its manifest) to the entry folder of `key`.

    An intact entry already there (another process won) is kept and returned; a damaged one is moved to
    `.quarantine/` and the rename retried.

    Raises:
        CacheError: when the folder cannot be created or is taken by an entry this pdo-hub cannot use.
    """
    final = entry_dir(root, key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"Cannot create {final.parent} for the new cache entry: {err}.") from err
    for _ in range(_PLACE_ATTEMPTS):
        try:
            # Atomic: readers see no folder or the complete one. It fails when `final` exists and is
            # not an empty folder, which is how a concurrent winner is detected.
            crashpoint("place.renaming")
            os.rename(tmp, final)
        except OSError as err:
            if not os.path.lexists(final):
                raise CacheError(f"Cannot move the new cache entry into {final}: {err}.") from err
            verdict = examine(root, final, Check.FULL, key)
            if verdict.entry is not None:
                logger.info("Cache entry %s already exists; keeping it and discarding the new one.", final)
                touch(final)
                return verdict.entry
            if not verdict.damaged:
                raise CacheError(
                    f"Cannot store the entry at {final}: the folder is taken ({verdict.reason}). Upgrade pdo-hub "
                    "or point PDO_HUB_CACHE at another folder."
                ) from err
            moved = quarantine(root, final)
            logger.warning("Cache entry %s was damaged (%s); moved it to %s.", final, verdict.reason, moved)
        else:
            crashpoint("place.renamed")
            touch(final)
            return CacheEntry(key, final, manifest)
    raise CacheError(f"Cannot place the new cache entry at {final}: it kept being replaced; try again.")
