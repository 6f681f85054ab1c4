"""Temp folders of commits in progress, told apart from what a killed commit left behind.

A commit writes its entry into `.tmp/<entry folder>.<random>/` while holding a file lock on
`.tmp/<entry folder>.<random>.lock`, taken before the folder is created and released only after the
folder has been renamed into place or deleted. The kernel releases the lock of a process that dies,
however it dies, so a temp folder whose lock is free belongs to nobody: the next commit or `pdo-hub
cache prune` deletes it at once instead of after `STALE_TMP_SECONDS`. A folder without a lock file
(from an older pdo-hub) is still judged by its age only. Folder names are never reused, so a folder
judged abandoned cannot be taken up again between the check and its deletion.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import filelock

from pdo_hub.cache.layout import children
from pdo_hub.core._crashpoints import crashpoint

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class TempFolder:
    """A new, unique folder under `area`, marked in use from `create()` to `close()`.

    Args:
        area: The cache's temp folder (`<root>/.tmp`).
        prefix: Start of the folder name (the entry folder name, for people looking at `.tmp/`).
    """

    def __init__(self, area: Path, prefix: str) -> None:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        self.path = area / name
        self._lock_path = area / f"{name}{LOCK_SUFFIX}"
        self._lock = filelock.FileLock(self._lock_path, timeout=0)

    def create(self) -> Path:
        """Take the lock, then create the folder; returns it.

        Raises:
            OSError: when the lock or the folder cannot be created.
        """
        try:
            self._lock.acquire()
        except filelock.Timeout as err:  # a fresh random name: nobody else can hold it
            raise OSError(f"cannot lock {self._lock_path}: {err}") from err
        crashpoint("tmp.locked")
        try:
            self.path.mkdir()
        except BaseException:
            self._release()
            raise
        return self.path

    def close(self) -> None:
        """Delete the folder if it is still there (it was not renamed into place), then drop the lock."""
        from pdo_hub.cache._files import delete  # deferred: _files imports this module

        try:
            if self.path.exists():
                delete(self.path)
        finally:
            self._release()

    def _release(self) -> None:
        # Removed while still held, so nobody can be holding the file at that path; filelock notices an
        # unlinked lock file and retries, and on Windows (no unlink while open) release removes it.
        try:
            self._lock_path.unlink(missing_ok=True)
        except OSError as err:
            logger.debug("Cannot remove %s: %s", self._lock_path, err)
        self._lock.release()


def abandoned(area: Path) -> list[Path]:
    """What ended writers left under `area`: temp folders whose lock is free (each followed by its lock
    file), and free lock files without a folder (a writer killed before creating it or after placing it)."""
    found = []
    for path in sorted(children(area)):
        if path.name.endswith(LOCK_SUFFIX):
            if not path.with_name(path.name[: -len(LOCK_SUFFIX)]).exists() and _free(path):
                found.append(path)
            continue
        lock = path.with_name(path.name + LOCK_SUFFIX)
        # No lock file: a folder of an older pdo-hub, judged by age only.
        if lock.exists() and _free(lock) and path.exists():
            found += [path, lock]
    return found


def _free(lock: Path) -> bool:
    try:
        with filelock.FileLock(lock, timeout=0):
            return True
    except (filelock.Timeout, OSError):
        return False
