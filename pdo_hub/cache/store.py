"""`OptimizedCache`: look up, commit, lock, list, remove and evict optimized models.

Guarantees: an entry is complete or absent. A writer fills a unique temp folder inside the cache root
(same filesystem), the manifest is written last, and one `os.rename` puts the folder into place. The
per-key file lock only keeps two processes from optimizing the same model twice; if locking fails or
is bypassed, the rename still decides a single winner and nothing half-written is ever visible.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import filelock

from pdo_hub.cache import refs
from pdo_hub.cache._files import (
    delete,
    discard,
    last_access_ns,
    leftovers,
    orphan_locks,
    prepare_root,
    release_lock,
    touch,
)
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.integrity import examine
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import TMP_DIR, entry_dir, entry_folder_name, entry_folders, lock_path
from pdo_hub.cache.manifest import ManifestError, build_manifest, read_manifest, write_manifest
from pdo_hub.core import constants
from pdo_hub.core.errors import CacheError, ConfigError, InvalidRepoIdError

logger = logging.getLogger(__name__)

# How often commit retries when a damaged folder sits where its entry must go.
_PLACE_ATTEMPTS = 3


class OptimizedCache:
    """The optimized model store under one root folder.

    Args:
        root: Cache root. None means `pdo_hub.core.constants.cache_dir()`, read at each call so that
            `PDO_HUB_CACHE` can change after the object is made.

    Example:
        >>> cache = OptimizedCache()
        >>> entry = cache.get_or_create(key, lambda folder: save_model(model, folder / "model.safetensors"))
        >>> entry.read_json("optimization_report.json")
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._root = Path(root).expanduser() if root is not None else None

    @property
    def root(self) -> Path:
        """The cache root folder."""
        return self._root if self._root is not None else constants.cache_dir()

    # --- reading -------------------------------------------------------------------------------

    def lookup(self, key: CacheKey, *, verify: bool = True) -> CacheEntry | None:
        """Return the entry of `key` if it is present and intact, else None.

        Every file listed in the manifest is checked for presence and size and, with `verify`, its
        sha256. A damaged entry is logged as a warning, removed, and reported as a miss. An entry
        written by a newer pdo-hub is a miss too (with a warning) but is left in place.

        Args:
            key: What to look for.
            verify: Recompute the sha256 of every file (sizes are always checked). Turning it off saves
                reading the whole model at each load, at the cost of missing same-size corruption.
        """
        path = entry_dir(self.root, key)
        if not os.path.lexists(path):
            return None
        verdict = examine(self.root, path, verify, key)
        if verdict.entry is not None:
            touch(path)
            return verdict.entry
        if verdict.damaged:
            logger.warning("Cache entry %s is damaged (%s); removing it, it will be rebuilt.", path, verdict.reason)
            discard(self.root, path)
        else:
            logger.warning("Cache entry %s cannot be used (%s); treating it as a miss.", path, verdict.reason)
        return None

    def list_entries(self) -> list[CacheEntry]:
        """Every entry with a readable manifest, sorted by path (files are not re-hashed here)."""
        root = self.root
        found = []
        for path in entry_folders(root):
            try:
                manifest = read_manifest(path)
                key = CacheKey.from_dict(manifest["key"])
            except (ManifestError, InvalidRepoIdError) as err:
                logger.debug("Skipping %s in the listing: %s", path, err)
                continue
            # Skip entries this pdo-hub cannot use, and manifests copied into the wrong folder.
            if manifest["format_version"] <= CACHE_FORMAT_VERSION and entry_dir(root, key) == path:
                found.append(CacheEntry(key, path, manifest))
        return sorted(found, key=lambda entry: str(entry.path))

    def size_bytes(self) -> int:
        """Total size of the files of all listed entries."""
        return sum(entry.total_bytes for entry in self.list_entries())

    # --- writing -------------------------------------------------------------------------------

    def commit(self, key: CacheKey, writer: Callable[[Path], None]) -> CacheEntry:
        """Store a new entry for `key`: `writer` fills a temp folder, which is then renamed into place.

        If an intact entry for `key` already exists (or another process commits first), the new files
        are discarded and the existing entry is returned. If `writer` raises, the temp folder is removed,
        nothing appears in the cache, and the exception propagates unchanged.

        Args:
            key: The key to store under.
            writer: Called with an empty folder; writes the entry's files into it (sub-folders allowed;
                no symbolic links, and not the reserved names `pdo_manifest.json` / `.pdo_access`).

        With `PDO_HUB_CACHE_MAX_SIZE` set, least-recently-used entries are then evicted down to that size
        (never the entry just committed).

        Returns:
            The committed (or already present) entry.

        Raises:
            CacheError: when the writer wrote nothing or a reserved name or link, or the folder cannot be
                placed (e.g. it holds an entry of a newer pdo-hub).
            ConfigError: when `PDO_HUB_CACHE_MAX_SIZE` is not a size (checked before `writer` runs).
        """
        root = self.root
        max_bytes = constants.cache_max_size()
        try:
            prepare_root(root)
            tmp = Path(tempfile.mkdtemp(prefix=f"{entry_folder_name(key)}.", dir=root / TMP_DIR))
        except OSError as err:
            raise CacheError(
                f"Cannot write to the optimized cache at {root}: {err}. Point PDO_HUB_CACHE at a writable folder."
            ) from err
        try:
            writer(tmp)
            manifest = build_manifest(tmp, key)
            write_manifest(tmp, manifest)
            entry = self._place(key, tmp, entry_dir(root, key), manifest)
        finally:
            if tmp.exists():
                delete(tmp)
        if max_bytes is not None:
            self.evict(max_bytes, keep=key)
        return entry

    def lock(self, key: CacheKey, timeout: float = -1) -> filelock.FileLock:
        """A file lock for `key`, to use as a context manager around building it.

        It only avoids duplicate work between processes; correctness never depends on it.

        Args:
            key: The key to lock.
            timeout: Seconds to wait; -1 waits forever. On expiry `filelock.Timeout` is raised.
        """
        path = lock_path(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(path, timeout=timeout)

    def get_or_create(
        self, key: CacheKey, build: Callable[[Path], None], *, verify: bool = True, lock_timeout: float = -1
    ) -> CacheEntry:
        """Return the entry of `key`, building it with `build` (as in `commit`) when it is missing.

        On a miss the key's lock is taken and the cache looked up again, so a process that waited for
        another one's build reuses its result instead of building again.

        Args:
            key: The key.
            build: Writer for `commit`, called only on a miss.
            verify: Passed to `lookup`.
            lock_timeout: Seconds to wait for the lock (-1: forever); `filelock.Timeout` on expiry.
        """
        entry = self.lookup(key, verify=verify)
        if entry is not None:
            return entry
        with self.lock(key, timeout=lock_timeout):
            entry = self.lookup(key, verify=verify)
            if entry is not None:
                logger.debug("Another process built %s while this one waited for the lock.", entry.path)
                return entry
            return self.commit(key, build)

    def remove(self, key: CacheKey) -> bool:
        """Remove the entry of `key`. Returns True when there was one."""
        path = entry_dir(self.root, key)
        if not os.path.lexists(path):
            return False
        discard(self.root, path)
        return True

    def evict(self, max_bytes: int, *, keep: CacheKey | None = None, dry_run: bool = False) -> list[CacheEntry]:
        """Remove least-recently-used entries until the total size is at most `max_bytes`.

        Use is recorded by `lookup`, `commit` and `get_or_create` in a stamp file of each entry (not the
        filesystem's atime, which is often disabled).

        Args:
            max_bytes: The size to get down to.
            keep: An entry never to evict (the one just committed), even if the limit then stays exceeded.
            dry_run: Only say what would be removed.

        Returns:
            The removed entries, least recently used first.

        Raises:
            ConfigError: when `max_bytes` is negative.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"evict(max_bytes={max_bytes!r}): use a size in bytes, 0 or more.")
        entries = sorted(self.list_entries(), key=last_access_ns)
        total = sum(entry.total_bytes for entry in entries)
        removed = []
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.key == keep:
                continue
            if not dry_run:
                discard(self.root, entry.path)
            total -= entry.total_bytes
            removed.append(entry)
        if removed and not dry_run:
            logger.info("Evicted %d cache entries; %d bytes remain.", len(removed), total)
        return removed

    def prune(self, max_bytes: int | None = None, *, dry_run: bool = False) -> tuple[list[CacheEntry], list[Path]]:
        """Evict down to `max_bytes` (see `evict`) and clear what interrupted processes left behind.

        Leftovers are temp folders older than `STALE_TMP_SECONDS`, the trash, and lock files of entries
        that do not exist, untouched for as long and held by nobody.

        Args:
            max_bytes: Size limit; None only clears leftovers.
            dry_run: Only say what would be removed.

        Returns:
            (evicted entries, least recently used first; leftover paths removed).
        """
        evicted = self.evict(max_bytes, dry_run=dry_run) if max_bytes is not None else []
        root = self.root
        cleared = leftovers(root)
        if not dry_run:
            for path in cleared:
                delete(path)
        cleared += [path for path in orphan_locks(root) if release_lock(path, dry_run)]
        return evicted, cleared

    # --- refs ----------------------------------------------------------------------------------

    def set_ref(self, kind: str, source_id: str, ref_name: str, revision: str) -> Path:
        """Record that `ref_name` (e.g. `main`) of a source points to `revision`. See `refs.set_ref`."""
        return refs.set_ref(self.root, kind, source_id, ref_name, revision)

    def resolve_ref(self, kind: str, source_id: str, ref_name: str) -> str | None:
        """The revision `ref_name` points to, or None when unknown; no network. See `refs.resolve_ref`."""
        return refs.resolve_ref(self.root, kind, source_id, ref_name)

    # --- internals -----------------------------------------------------------------------------

    def _place(self, key: CacheKey, tmp: Path, final: Path, manifest: dict) -> CacheEntry:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"Cannot create {final.parent} for the new cache entry: {err}.") from err
        for _ in range(_PLACE_ATTEMPTS):
            try:
                # Atomic: readers see no folder or the complete one. It fails when `final` exists and is
                # not an empty folder, which is how a concurrent winner is detected.
                os.rename(tmp, final)
            except OSError as err:
                if not os.path.lexists(final):
                    raise CacheError(f"Cannot move the new cache entry into {final}: {err}.") from err
                verdict = examine(self.root, final, True, key)
                if verdict.entry is not None:
                    logger.info("Cache entry %s already exists; keeping it and discarding the new one.", final)
                    touch(final)
                    return verdict.entry
                if not verdict.damaged:
                    raise CacheError(
                        f"Cannot store the entry at {final}: the folder is taken ({verdict.reason}). Upgrade pdo-hub "
                        "or point PDO_HUB_CACHE at another folder."
                    ) from err
                logger.warning("Replacing damaged cache entry %s (%s).", final, verdict.reason)
                discard(self.root, final)
            else:
                touch(final)
                return CacheEntry(key, final, manifest)
        raise CacheError(f"Cannot place the new cache entry at {final}: it kept being replaced; try again.")
