"""`OptimizedCache`: look up, commit, lock, list, remove and evict optimized models.

Guarantees: an entry is complete or absent. A writer fills a unique temp folder inside the cache root
(same filesystem), the manifest is written last, and one `os.rename` puts the folder into place. The
per-key file lock only keeps two processes from optimizing the same model twice; if locking fails or
is bypassed, the rename still decides a single winner and nothing half-written is ever visible.

With a shared tier (`PDO_HUB_SHARED_CACHE`, see `pdo_hub.cache.shared_tier`), a local miss is looked up
there and pulled into the local cache (checked file by file, placed by the same rename), and a build
takes the key's build lease on the tier, then publishes to it after committing locally. The tier is an
addition: when it cannot be reached, lookups are local misses and builds are kept locally, with a warning.

Nothing is deleted behind the user's back: a damaged entry is moved to `.quarantine/` (by a lookup of a
caller holding the key's lock, or by a commit that finds it in the way), an entry of a newer pdo-hub is
left alone, and only `remove`, `evict` and `prune` delete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pdo_hub.cache import refs
from pdo_hub.cache._files import (
    delete,
    discard,
    last_access_ns,
    leftovers,
    new_temp_folder,
    orphan_locks,
    release_lock,
    touch,
)
from pdo_hub.cache._objects import SharedCacheError
from pdo_hub.cache._place import place
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.integrity import Check, Verdict, examine, quarantine
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import entry_dir, entry_folder_name, entry_folders, lock_path
from pdo_hub.cache.locking import KeyLock
from pdo_hub.cache.manifest import ManifestError, build_manifest, read_manifest, write_manifest
from pdo_hub.core import constants
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import ConfigError, InvalidRepoIdError

if TYPE_CHECKING:
    from pdo_hub.cache.shared_tier import SharedTier

logger = logging.getLogger(__name__)


class OptimizedCache:
    """The optimized model store under one root folder.

    Args:
        root: Cache root. None means `pdo_hub.core.constants.cache_dir()`, read at each call so that
            `PDO_HUB_CACHE` can change after the object is made.
        shared: The shared tier's URL (or a `SharedTier`). None means `PDO_HUB_SHARED_CACHE`, read at each
            call; unset, there is no shared tier.

    Example:
        >>> cache = OptimizedCache()
        >>> entry = cache.get_or_create(key, lambda folder: save_model(model, folder / "model.safetensors"))
        >>> entry.read_json("optimization_report.json")
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, shared: str | SharedTier | None = None) -> None:
        self._root = Path(root).expanduser() if root is not None else None
        self._shared = shared

    @property
    def root(self) -> Path:
        """The cache root folder."""
        return self._root if self._root is not None else constants.cache_dir()

    @property
    def shared(self) -> SharedTier | None:
        """The shared tier, or None when none is configured.

        Raises:
            ConfigError: for a URL pdo-hub cannot use (the message says why), or s3fs missing.
        """
        if self._shared is None or isinstance(self._shared, str):
            url = self._shared or constants.shared_cache_url()
            if url is None:
                return None
            from pdo_hub.cache.shared_tier import tier_for  # imports fsspec: only with a tier

            return tier_for(url)
        return self._shared

    # --- reading -------------------------------------------------------------------------------

    def lookup(self, key: CacheKey, *, verify: bool = True, repair: bool = False,
               shared: bool = True) -> CacheEntry | None:
        """Return the entry of `key` if it is present and intact, else None.

        Every file listed in the manifest is checked against it (see `examine`). A damaged entry is a miss,
        logged as a warning; it is moved to `.quarantine/` only with `repair` (pass it only while holding
        `lock(key)`, so that no builder of the key sees its folder vanish), else left in place. An entry
        written by a newer pdo-hub is a miss too and always left in place.

        Args:
            key: What to look for.
            verify: Re-hash every file. Without it only the files changed since their last check are hashed
                (a few `stat` calls per hit); see `pdo_hub.cache._verified` for what that catches.
            repair: Quarantine a damaged entry (the caller holds the key's lock).
            shared: On a local miss, pull the entry from the shared tier (when one is configured).
        """
        verdict = self.examine(key, verify=verify, shared=shared)
        if verdict is None:
            return None
        if verdict.entry is not None:
            self.mark_used(verdict.entry)
            return verdict.entry
        if verdict.damaged and repair:
            self.quarantine(key, f"damaged: {verdict.reason}")
        elif verdict.damaged:
            logger.warning("Cache entry %s is damaged (%s); a miss, left in place until a build of it sets it aside.",
                           verdict.path, verdict.reason)
        else:
            logger.warning("Cache entry %s cannot be used (%s); a miss, left in place.", verdict.path, verdict.reason)
        return None

    def examine(self, key: CacheKey, *, verify: bool = False, shared: bool = True) -> Verdict | None:
        """Judge the folder of `key` without moving anything: None when absent, else a `Verdict` (usable,
        damaged, or unusable but intact, e.g. from a newer pdo-hub). Files found intact are recorded in
        the entry's verified stamp.

        Args:
            key: The key.
            verify: Re-hash every file; without it only the files changed since their last check.
            shared: When the folder is absent, pull the entry from the shared tier first (if configured).
        """
        path = entry_dir(self.root, key)
        if not os.path.lexists(path) and (not shared or self.pull(key) is None):
            return None
        return examine(self.root, path, Check.FULL if verify else Check.CHANGED, key)

    def pull(self, key: CacheKey) -> CacheEntry | None:
        """Copy the entry of `key` from the shared tier into this cache (every file checked against the
        published sha256, then placed atomically). None without a tier, when the tier lacks a usable entry,
        or when it cannot be reached (a warning then: the caller falls back to building). Evicts down to
        `PDO_HUB_CACHE_MAX_SIZE` as `commit` does."""
        tier = self.shared
        if tier is None:
            return None
        max_bytes = constants.cache_max_size()
        try:
            entry = tier.pull(key, self.root)
        except SharedCacheError as err:
            logger.warning("%s A miss: the model is looked up or built locally.", err)
            return None
        if entry is not None and max_bytes is not None:
            self.evict(max_bytes, keep=key)  # a pulled entry fills the local disk like a built one
        return entry

    def quarantine(self, key: CacheKey, reason: str) -> Path | None:
        """Move the folder of `key` to `.quarantine/` (kept for inspection, never deleted) and warn naming
        both places. Call it while holding `lock(key)`. Returns where it went (None if it was gone).

        Raises:
            CacheError: when it cannot be moved (then nothing was changed).
        """
        path = entry_dir(self.root, key)
        if not os.path.lexists(path):
            return None
        target = quarantine(self.root, path)
        logger.warning("Cache entry %s cannot be used (%s); moved it to %s. It will be rebuilt.", path, reason, target)
        return target

    def mark_used(self, entry: CacheEntry) -> None:
        """Record a use of `entry` for least-recently-used eviction (best effort)."""
        touch(entry.path)

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

        With a shared tier, the key's build lease is taken first (waiting while another machine builds
        it); an entry published there meanwhile is pulled instead of built, and a new entry is published
        after it is committed here (a failure to publish only warns: the local entry stays).

        Returns:
            The committed (or already present) entry.

        Raises:
            CacheError: when the writer wrote nothing or a reserved name or link, or the folder cannot be
                placed (e.g. it holds an entry of a newer pdo-hub).
            CacheLockTimeoutError: another machine held the key's build lease longer than `PDO_HUB_LOCK_TIMEOUT`.
            ConfigError: when `PDO_HUB_CACHE_MAX_SIZE` is not a size (checked before `writer` runs).
        """
        tier = self.shared
        if tier is None:
            return self._commit_here(key, writer)
        lease = tier.lease(key, constants.shared_lease_seconds())
        try:
            found = lease.acquire(constants.lock_timeout(), lambda: self.pull(key))
        except SharedCacheError as err:
            logger.warning("%s Building without the shared build lease.", err)
            found = None
        if found is not None:
            return found
        try:
            entry = self._commit_here(key, writer)
            crashpoint("commit.shared_publishing")
            try:
                tier.publish(entry)
            except SharedCacheError as err:
                logger.warning("%s The new entry %s is kept in the local cache only.", err, entry.path)
        finally:
            lease.release()
        return entry

    def _commit_here(self, key: CacheKey, writer: Callable[[Path], None]) -> CacheEntry:
        root = self.root
        max_bytes = constants.cache_max_size()
        temp = new_temp_folder(root, key)
        tmp = temp.path
        try:
            crashpoint("commit.tmp_created")
            writer(tmp)
            crashpoint("commit.written")
            manifest = build_manifest(tmp, key)
            write_manifest(tmp, manifest)
            crashpoint("commit.manifest_written")
            entry = place(root, key, tmp, manifest)
            crashpoint("commit.placed")
        finally:
            temp.close()  # deletes the folder unless it was renamed into place, then drops its lock
        if max_bytes is not None:
            self.evict(max_bytes, keep=key)
        return entry

    def lock(self, key: CacheKey, timeout: float | None = None) -> KeyLock:
        """A file lock for `key`, to use as a context manager around building it.

        It only avoids duplicate work between processes; correctness never depends on it. The holder
        records its pid, host and start time beside it, for the message of a waiter that gives up.

        Args:
            key: The key to lock.
            timeout: Seconds to wait; None: `PDO_HUB_LOCK_TIMEOUT` (default 1800); negative waits forever.

        Raises:
            CacheLockTimeoutError: on entering, when the wait expires (the message names the holder).
            ConfigError: when `PDO_HUB_LOCK_TIMEOUT` is not a number.
        """
        path = lock_path(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        wait = constants.lock_timeout() if timeout is None else timeout
        return KeyLock(path, wait, f"{key.kind}:{key.source_id}@{key.revision[:12]} ({entry_folder_name(key)})")

    def get_or_create(
        self, key: CacheKey, build: Callable[[Path], None], *, verify: bool = True, lock_timeout: float | None = None
    ) -> CacheEntry:
        """Return the entry of `key`, building it with `build` (as in `commit`) when it is missing.

        On a miss the key's lock is taken and the cache looked up again, so a process that waited for
        another one's build reuses its result instead of building again; a damaged entry is moved to
        `.quarantine/` then (under the lock) and rebuilt.

        Args:
            key: The key.
            build: Writer for `commit`, called only on a miss.
            verify: Passed to `lookup`.
            lock_timeout: Seconds to wait for the lock (None: `PDO_HUB_LOCK_TIMEOUT`; negative: forever).

        Raises:
            CacheLockTimeoutError: when another process holds the lock longer than `lock_timeout`.
        """
        entry = self.lookup(key, verify=verify)
        if entry is not None:
            return entry
        with self.lock(key, timeout=lock_timeout):
            # Local only: `commit` looks on the shared tier first thing (its build lease polls for a published entry).
            entry = self.lookup(key, verify=verify, repair=True, shared=False)
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
