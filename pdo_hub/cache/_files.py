"""Filesystem housekeeping of the cache: access stamps, atomic removal through a trash folder, and
clean-up of what interrupted processes leave behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.layout import ACCESS_STAMP, CACHEDIR_TAG, CACHEDIR_TAG_CONTENT, TMP_DIR, TRASH_DIR

logger = logging.getLogger(__name__)

#: Temp folders older than this are left over by a crashed process and are removed on commit.
STALE_TMP_SECONDS = 24 * 3600


def prepare_root(root: Path) -> None:
    """Create the root and temp area, tag the root, and clear leftovers of interrupted commits."""
    (root / TMP_DIR).mkdir(parents=True, exist_ok=True)
    tag = root / CACHEDIR_TAG
    if not tag.exists():
        try:
            tag.write_text(CACHEDIR_TAG_CONTENT, encoding="utf-8")
        except OSError as err:  # a missing tag only affects backup tools
            logger.debug("Cannot write %s: %s", tag, err)
    cutoff = time.time() - STALE_TMP_SECONDS
    for path in children(root / TMP_DIR):
        try:
            stale = path.lstat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            logger.info("Removing stale temp folder %s left by an interrupted commit.", path)
            delete(path)
    # Whatever is in the trash was already renamed out of the cache: removing it is always safe.
    for path in children(root / TRASH_DIR):
        delete(path)


def discard(root: Path, path: Path) -> None:
    """Remove an entry folder: rename it out of the cache first, so no reader sees it half-deleted."""
    trash = root / TRASH_DIR
    try:
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{path.name}.{uuid.uuid4().hex}"
        os.rename(path, target)
    except FileNotFoundError:
        return  # someone else removed it already
    except OSError as err:
        logger.warning("Cannot move %s to the trash (%s); deleting it in place.", path, err)
        target = path
    delete(target)


def children(folder: Path) -> list[Path]:
    """Entries of `folder`, or none when it does not exist."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def delete(path: Path) -> None:
    """Delete a file or folder tree, best effort."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except OSError as err:  # leftovers only cost disk space; the next commit retries the trash
        logger.warning("Cannot delete %s: %s", path, err)


def touch(path: Path) -> None:
    """Record a use of the entry (for LRU eviction); best effort, a read-only cache still works."""
    stamp = path / ACCESS_STAMP
    now = time.time_ns()
    try:
        stamp.touch(exist_ok=True)
        os.utime(stamp, ns=(now, now))
    except OSError as err:
        logger.debug("Cannot record the use of %s: %s", path, err)


def last_access_ns(entry: CacheEntry) -> int:
    """Last recorded use of an entry (its creation when never stamped), in ns since the epoch."""
    try:
        return (entry.path / ACCESS_STAMP).stat().st_mtime_ns
    except OSError:
        return int(entry.created_at * 1e9)
