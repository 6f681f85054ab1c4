"""The shared cache tier: optimized entries on an object store (S3) that many machines read and fill.

`OptimizedCache` looks up its local folder first, then this tier, then builds; a build is published
to both (see `pdo_hub.cache.store`). Set it with `PDO_HUB_SHARED_CACHE=s3://bucket/prefix` (or a
local/NFS folder); the S3 endpoint and credentials come from the usual AWS settings
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), see docs/shared-cache.md.

Layout under the tier's base path::

    {repo folder}/entries/{entry folder}.json        the record: upload id + the entry's manifest
    {repo folder}/objects/{entry folder}/{upload}/…  the entry's files, one folder per upload attempt
    .leases/{repo folder}/{entry folder}/{n}          build leases (`pdo_hub.cache._lease`)

Object stores have no rename, so publication goes: every data object under a fresh upload id (a
location no reader trusts, because no record names it yet), then the record, created with the store's
atomic create-if-absent (`pdo_hub.cache._objects`). The record is the commit point: absent, the entry
does not exist; present, it names a complete upload. Exactly one publisher's create succeeds; a loser
deletes its own upload. A reader downloads into the local cache's temp folder, checks every file
against the record's sha256, and places the folder with the local cache's atomic rename: a local entry
is complete or absent, and a remote entry that does not match its record is a miss with a warning,
never served.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pdo_hub.cache._files import new_temp_folder
from pdo_hub.cache._lease import BuildLease
from pdo_hub.cache._objects import ObjectStore, SharedCacheError, json_field, open_store
from pdo_hub.cache._place import place
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import entry_folder_name, parse_repo_folder, repo_folder_name
from pdo_hub.cache.manifest import ManifestError, check_manifest, write_manifest
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import InvalidRepoIdError

logger = logging.getLogger(__name__)

#: Version of the record format; a reader ignores records of a newer one.
SHARED_FORMAT = 1
#: An upload no record names that is older than this belongs to a publisher that is gone: the next
#: publisher of the key deletes it. A day, so that no live publisher can ever lose its objects.
STALE_UPLOAD_SECONDS = 24 * 3600


@dataclass(frozen=True)
class PullStats:
    """What the last pull of this process moved (for logs and the benchmark)."""

    bytes: int
    transfer_seconds: float  #: time spent downloading the files from the store
    seconds: float  #: the whole pull: transfer, hashing, writing, placing


class SharedTier:
    """Published cache entries on an object store.

    Args:
        url: `s3://bucket/prefix`, or a local folder (`file:///mnt/shared/pdo`).

    Raises:
        ConfigError: for an unsupported protocol, a URL without a bucket, or s3fs missing.
    """

    def __init__(self, url: str) -> None:
        self.objects = open_store(url)
        self.url = self.objects.shown
        self.last_pull: PullStats | None = None
        # Records found damaged, by their bytes: not downloaded again, and replaced by the next publish.
        self._damaged: set[bytes] = set()

    def __repr__(self) -> str:
        return f"SharedTier({self.url!r})"

    # --- names ---------------------------------------------------------------------------------

    def record_path(self, key: CacheKey) -> str:
        return self.objects.path(repo_folder_name(key.kind, key.source_id), "entries", f"{entry_folder_name(key)}.json")

    def _uploads(self, key: CacheKey) -> str:
        return self.objects.path(repo_folder_name(key.kind, key.source_id), "objects", entry_folder_name(key))

    def lease(self, key: CacheKey, ttl: float) -> BuildLease:
        """The build lease of `key` (not yet taken); see `pdo_hub.cache._lease`."""
        folder = self.objects.path(".leases", repo_folder_name(key.kind, key.source_id), entry_folder_name(key))
        return BuildLease(self.objects, folder, ttl, f"{key.kind}:{key.source_id}@{key.revision[:12]}")

    # --- reading -------------------------------------------------------------------------------

    def has(self, key: CacheKey) -> bool:
        """True when a record of `key` is published (its files are not checked here)."""
        return self.objects.read(self.record_path(key)) is not None

    def pull(self, key: CacheKey, root: Path) -> CacheEntry | None:
        """Copy the published entry of `key` into the local cache at `root`, checked file by file.

        Returns:
            The local entry; None when nothing is published, or the published entry is unusable (damaged,
            another key's, a newer format: a warning says which, and a damaged one is not fetched again).

        Raises:
            SharedCacheError: the store cannot be reached (nothing was placed locally).
            CacheError: the local cache cannot be written.
        """
        raw = self.objects.read(self.record_path(key))
        if raw is None or raw in self._damaged:
            return None
        started = time.perf_counter()
        try:
            upload, manifest = self._parse(raw, key)
        except _Foreign as err:  # not damaged: left alone, and never replaced by this pdo-hub
            logger.warning("The shared cache entry %s cannot be used (%s); a miss.", self.record_path(key), err)
            return None
        except ManifestError as err:
            return self._reject(raw, key, str(err))
        temp = new_temp_folder(root, key)
        tmp = temp.path
        try:
            transfer, problems = self._download(key, upload, manifest, tmp)
            if problems:
                return self._reject(raw, key, "; ".join(problems))
            write_manifest(tmp, manifest)
            crashpoint("shared.pulled")
            entry = place(root, key, tmp, manifest)
        finally:
            temp.close()  # deletes what was downloaded unless it was placed
        size = sum(info["size"] for info in manifest["files"].values())
        self.last_pull = PullStats(size, transfer, time.perf_counter() - started)
        logger.info("Pulled %s (%d bytes) from the shared cache %s in %.2f s (%.2f s of transfer).", entry.path,
                    size, self.url, self.last_pull.seconds, transfer)
        return entry

    def _parse(self, raw: bytes, key: CacheKey) -> tuple[str, dict]:
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise ManifestError(f"unreadable record: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("upload"), str) or "/" in record["upload"]:
            raise ManifestError("malformed record")
        if isinstance(record.get("format"), int) and record["format"] > SHARED_FORMAT:
            raise _Foreign(f"record format {record['format']}, this pdo-hub reads {SHARED_FORMAT}; upgrade pdo-hub")
        if record.get("format") != SHARED_FORMAT:
            raise ManifestError(f"record format {record.get('format')!r}, this pdo-hub reads {SHARED_FORMAT}")
        manifest = check_manifest(record.get("manifest"))
        if manifest["format_version"] > CACHE_FORMAT_VERSION:
            raise _Foreign(f"written by a newer pdo-hub (format {manifest['format_version']}); upgrade pdo-hub")
        try:
            stored = CacheKey.from_dict(manifest["key"])
        except InvalidRepoIdError as err:
            raise ManifestError(f"invalid key: {err}") from err
        if stored != key:
            raise _Foreign(f"it holds another key ({stored})")
        return record["upload"], manifest

    def _download(self, key: CacheKey, upload: str, manifest: dict, tmp: Path) -> tuple[float, list[str]]:
        """Download every file into `tmp`, hashing the bytes written as they arrive, and check each against the
        manifest (size, then sha256); returns (seconds of transfer and hashing, overlapped; problems)."""
        folder = f"{self._uploads(key)}/{upload}"
        pairs = {}
        for name in sorted(manifest["files"]):
            target = tmp.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            pairs[name] = (f"{folder}/{name}", target)
        started = time.perf_counter()
        got = _download(self.objects, list(pairs.values()))
        transfer = time.perf_counter() - started
        problems = []
        for name, (remote, _) in pairs.items():
            expected = manifest["files"][name]
            if got[remote] is None:
                problems.append(f"{name}: missing")
            elif got[remote][0] != expected["size"]:
                problems.append(f"{name}: size {got[remote][0]}, expected {expected['size']}")
            elif got[remote][1] != expected["sha256"]:
                problems.append(f"{name}: sha256 differs from the record")
        return transfer, problems

    def _reject(self, raw: bytes, key: CacheKey, reason: str) -> None:
        self._damaged.add(raw)
        logger.warning("The shared cache entry %s cannot be used (%s); a miss. The next build of it replaces it.",
                       self.record_path(key), reason)
        return None

    def keys(self, kind: str, source_id: str, skip: frozenset[str] = frozenset()) -> list[CacheKey]:
        """Keys of the entries of one source published here (entry folder names in `skip` are not read)."""
        repo = repo_folder_name(kind, source_id)
        found = []
        for name in self.objects.names(self.objects.path(repo, "entries")):
            if not name.endswith(".json") or name.startswith(".") or name[: -len(".json")] in skip:
                continue
            raw = self.objects.read(self.objects.path(repo, "entries", name))
            try:
                key = CacheKey.from_dict(check_manifest(json.loads(raw or b"null").get("manifest"))["key"])
            except (ValueError, AttributeError, ManifestError, InvalidRepoIdError) as err:
                logger.debug("Skipping shared record %s: %s", name, err)
                continue
            if (key.kind, key.source_id) == (kind, source_id) and entry_folder_name(key) == name[: -len(".json")]:
                found.append(key)
        return found

    def sources(self) -> list[tuple[str, str]]:
        """(kind, source id) of every source folder of the tier."""
        return [source for name in self.objects.names(self.objects.base) if (source := parse_repo_folder(name))]

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, entry: CacheEntry) -> bool:
        """Publish a complete local entry: its files first, the record last (single winner).

        Returns:
            True when this call published it; False when a record of the key was already there (this
            call's uploaded objects are then deleted).

        Raises:
            SharedCacheError: the store failed (a record is never written before all the files).
        """
        key, record_path = entry.key, self.record_path(entry.key)
        existing = self.objects.read(record_path)
        if existing is not None and not self._replace_damaged(record_path, existing):
            return False
        upload = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
        folder = f"{self._uploads(key)}/{upload}"
        for name in entry.files:
            self.objects.upload(entry.file_path(name), f"{folder}/{name}")
        crashpoint("shared.objects_uploaded")
        record = json.dumps({"format": SHARED_FORMAT, "upload": upload, "manifest": entry.manifest}, sort_keys=True)
        won = self.objects.create(record_path, record.encode())
        crashpoint("shared.record_created")
        # Read back: on a store whose conditional create were not atomic, the record that stands decides.
        if won and json_field(self.objects.read(record_path), "upload") != upload:
            won = False
        if not won:
            logger.info("The shared cache already has %s (published by another machine); dropping this upload.",
                        record_path)
            self.objects.delete(list(self.objects.find(folder)))
            return False
        self._clear_stale_uploads(key, upload)
        logger.info("Published %s to the shared cache %s.", entry.path, self.url)
        return True

    # --- housekeeping -------------------------------------------------------------------------

    def prune(self, older_than: float = STALE_UPLOAD_SECONDS, *, dry_run: bool = False) -> list[str]:
        """Delete what killed processes left on the tier: uploads no record names and lease generations
        nobody renewed, untouched for `older_than` seconds (a live publisher finishes, and a live lease
        holder renews, well within the default day). Published entries are never touched.

        A publish of a key clears that key's own old uploads; this covers keys nobody publishes again.

        Returns:
            The object paths removed (or, with `dry_run`, that would be).

        Raises:
            SharedCacheError: the store cannot be reached.
        """
        cutoff = time.time() - older_than
        removed = []
        for repo in self.objects.names(self.objects.base):
            if parse_repo_folder(repo) is None:
                continue
            entries = self.objects.path(repo, "entries")
            named = {name[: -len(".json")]: json_field(self.objects.read(self.objects.path(repo, "entries", name)), "upload")
                     for name in self.objects.names(entries) if name.endswith(".json")}
            uploads = self.objects.path(repo, "objects")
            for path, modified in self.objects.find(uploads).items():
                entry, upload = (path[len(uploads) + 1:].split("/") + [""])[:2]
                if named.get(entry) != upload and modified < cutoff:
                    removed.append(path)
        removed += [path for path, modified in self.objects.find(self.objects.path(".leases")).items() if modified < cutoff]
        if not dry_run:
            self.objects.delete(removed)
        return removed

    def _replace_damaged(self, record_path: str, existing: bytes) -> bool:
        """Delete a record this process found damaged, so that a good build replaces it. Two repairers may
        both delete and create; each record standing names a complete upload, so readers stay safe."""
        if existing not in self._damaged:
            return False
        logger.warning("Replacing the damaged shared cache entry %s.", record_path)
        self.objects.delete([record_path])
        return True

    def _clear_stale_uploads(self, key: CacheKey, keep: str) -> None:
        """Delete uploads no record names that are older than `STALE_UPLOAD_SECONDS` (killed publishers')."""
        root = self._uploads(key)
        try:
            cutoff = time.time() - STALE_UPLOAD_SECONDS
            stale = [path for path, modified in self.objects.find(root).items()
                     if not path[len(root) + 1:].startswith(keep + "/") and modified < cutoff]
            self.objects.delete(stale)
        except SharedCacheError as err:  # housekeeping only
            logger.debug("Cannot clear old uploads under %s: %s", root, err)


class _Foreign(ManifestError):
    """An intact record this pdo-hub cannot use (newer format, another key): a miss, never replaced."""


def _download(objects: ObjectStore, pairs: list[tuple[str, Path]]) -> dict[str, tuple[int, str] | None]:
    """`objects.download` (a module function so that a test can cut the connection in the middle)."""
    return objects.download(pairs)


_TIERS: dict[tuple[str, ...], SharedTier] = {}


def tier_for(url: str) -> SharedTier:
    """The `SharedTier` of `url`, made once per process and endpoint setting (its client is reused)."""
    marker = (url, os.environ.get("AWS_ENDPOINT_URL", ""), os.environ.get("AWS_ENDPOINT_URL_S3", ""))
    tier = _TIERS.get(marker)
    if tier is None:
        tier = _TIERS[marker] = SharedTier(url)
    return tier
