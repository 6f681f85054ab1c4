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

import filelock

from pdo_hub.cache._tmp import TempFolder, abandoned
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.keys import CacheKey
from pdo_hub.cache.layout import (
    ACCESS_STAMP,
    CACHEDIR_TAG,
    CACHEDIR_TAG_CONTENT,
    ENTRIES_DIR,
    LOCKS_DIR,
    TMP_DIR,
    TRASH_DIR,
    children,
    entry_folder_name,
    holder_path,
)
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import CacheError

logger = logging.getLogger(__name__)

#: Temp folders (and free lock files of missing entries) older than this are left over by a crashed
#: process: temp folders are removed on commit, both by `OptimizedCache.prune`. A temp folder whose
#: writer has ended goes at once (see `pdo_hub.cache._tmp`); the age only decides for the others.
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
    for path in leftovers(root):
        logger.info("Removing %s, left by an interrupted commit or removal.", path)
        delete(path)


def new_temp_folder(root: Path, key: CacheKey) -> TempFolder:
    """A new temp folder (created, locked) for an entry of `key` under `root`, which is prepared first.

    Raises:
        CacheError: when the cache cannot be written.
    """
    temp = TempFolder(root / TMP_DIR, entry_folder_name(key))
    try:
        prepare_root(root)
        temp.create()
    except OSError as err:
        raise CacheError(
            f"Cannot write to the optimized cache at {root}: {err}. Point PDO_HUB_CACHE at a writable folder."
        ) from err
    return temp


def leftovers(root: Path, now: float | None = None) -> list[Path]:
    """Temp folders of ended writers or older than `STALE_TMP_SECONDS`, and everything in the trash: safe
    to delete."""
    cutoff = (time.time() if now is None else now) - STALE_TMP_SECONDS
    found = [path for path in children(root / TMP_DIR) if _mtime(path) < cutoff]
    found = sorted(dict.fromkeys(found + abandoned(root / TMP_DIR)))
    # Whatever is in the trash was already renamed out of the cache: removing it is always safe.
    return found + sorted(children(root / TRASH_DIR))


def orphan_locks(root: Path, now: float | None = None) -> list[Path]:
    """Lock files of entries that do not exist and that nobody touched for `STALE_TMP_SECONDS`.

    A missing entry may be one being built right now, so these are only candidates: `release_lock`
    deletes one only while holding it.
    """
    cutoff = (time.time() if now is None else now) - STALE_TMP_SECONDS
    found = []
    for repo in children(root / LOCKS_DIR):
        for lock in children(repo):
            entry = root / repo.name / ENTRIES_DIR / lock.name.removesuffix(".lock")
            if lock.name.endswith(".lock") and not os.path.lexists(entry) and _mtime(lock) < cutoff:
                found.append(lock)
    return sorted(found)


def release_lock(path: Path, dry_run: bool = False) -> bool:
    """Delete a lock file (with `dry_run`, only check) if nobody holds it; False when it is held.

    It is deleted while held here, so a current holder is never pulled out. A process that opened it just
    before may still lock the deleted file while another creates a new one: then both build the same
    entry, which costs time only (the atomic rename keeps one; locks never decide correctness).
    """
    try:
        with filelock.FileLock(path, timeout=0):
            if not dry_run:
                holder_path(path).unlink(missing_ok=True)  # a crashed holder's record goes with its lock
                path.unlink(missing_ok=True)
    except (filelock.Timeout, OSError) as err:
        logger.debug("Keeping lock %s: %s", path, err)
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return float("inf")  # gone or unreadable: never stale


def discard(root: Path, path: Path) -> None:
    """Remove an entry folder: rename it out of the cache first, so no reader sees it half-deleted."""
    trash = root / TRASH_DIR
    try:
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{path.name}.{uuid.uuid4().hex}"
        os.rename(path, target)
        crashpoint("discard.renamed")
    except FileNotFoundError:
        return  # someone else removed it already
    except OSError as err:
        logger.warning("Cannot move %s to the trash (%s); deleting it in place.", path, err)
        target = path
    delete(target)


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
