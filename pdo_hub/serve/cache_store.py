"""The optimized cache as Hub repos: what `pdo-hub serve` answers for optimized variants.

Each cache entry is one commit of a repo named after its source (`org/name` for a Hub model,
`torchvision/ResNet18_Weights.IMAGENET1K_V1` for torchvision weights). The commit sha is the
variant's own (a hash of its key and its files), never the upstream commit: clients cache files by
repo and sha, so serving optimized bytes under the upstream sha would mix them into the original's
snapshot. Branches: `pdo-<variant hash[:16]>` per variant, and `main` for the variant of the server's
default config (else the newest one). Files are served from the entry folders themselves, read-only;
sizes and sha256 come from each entry's manifest, so nothing is re-hashed per request.

Entries of local files are not served: their records name paths on the serving machine.

With a shared tier (`PDO_HUB_SHARED_CACHE`), several replicas with their own local caches serve one
set of variants: a repo's variants published there are pulled into the local cache (each file checked
against the published sha256, placed atomically) before it is answered, at most every
`shared_refresh_seconds` per repo, so a variant built by any worker or replica is served by all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.cache.layout import ENTRIES_DIR, entry_dir, entry_folder_name, repo_dir
from pdo_hub.cache.manifest import RESERVED_NAMES, ManifestError, read_manifest
from pdo_hub.core.errors import InvalidRepoIdError
from pdo_hub.hub._keys import VARIANT_BRANCH_PREFIX, variant_branch
from pdo_hub.serve._records import (
    CommitRecord,
    FileEntry,
    RepoRefs,
    RepoSettings,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    git_blob_sha1_header,
    is_commit_sha,
    is_lfs,
)

logger = logging.getLogger(__name__)

# Served kinds and the namespace their repos get (Hub repos keep their own id).
_KIND_NAMESPACE = {"torchvision": "torchvision"}
_SERVED_KINDS = ("huggingface", *_KIND_NAMESPACE)  # local files are not served (see above)
_HIDDEN_FILES = RESERVED_NAMES  # the manifest and the stamps stay private to the cache


def repo_id_of(key: CacheKey) -> str:
    """The repo id an entry is served under."""
    return repo_id_of_source(key.kind, key.source_id)


def repo_id_of_source(kind: str, source_id: str) -> str:
    """The repo id the entries of a source are served under."""
    namespace = _KIND_NAMESPACE.get(kind)
    return f"{namespace}/{source_id}" if namespace else source_id


@dataclass(frozen=True)
class _Variant:
    key: CacheKey
    path: Path
    commit: CommitRecord


class CacheRepoStore:
    """A read-only `ReadableRepoStore` over an `OptimizedCache`.

    Args:
        cache: The cache to serve (default: `PDO_HUB_CACHE`).
        main_variant_hashes: Variant hashes `main` prefers (the server's default config), most wanted first.
        shared_refresh_seconds: How long a listing of the shared tier (a repo's variants, or the repos for
            the model listing) is reused before it is listed again (one LIST request per repo, and one for
            the repos, per period; 0 lists on every request).
    """

    def __init__(self, cache: OptimizedCache | None = None, main_variant_hashes: tuple[str, ...] = (),
                 shared_refresh_seconds: float = 2.0) -> None:
        self.cache = cache or OptimizedCache()
        self.main_variant_hashes = tuple(main_variant_hashes)
        self.shared_refresh_seconds = shared_refresh_seconds
        self._synced: dict[tuple[str, str], float] = {}
        self._sources: tuple[float, list[tuple[str, str]]] | None = None  # (when, the tier's sources)
        self._lock = threading.Lock()
        self._scanned: dict[str, tuple[int, dict[str, _Variant]]] = {}
        self._small_oids: dict[str, str] = {}

    # -- the read protocol ----------------------------------------------------------------------
    def exists(self, repo_id: str) -> bool:
        try:
            return bool(self._variants(repo_id))
        except InvalidRepoIdError:
            return False

    def list_repos(self) -> list[str]:
        names = {repo_id_of(entry.key) for entry in self.cache.list_entries() if self._served(entry.key)}
        tier = self.cache.shared
        if tier is not None:
            for kind, source_id in self._tier_sources(tier):
                if kind in _SERVED_KINDS and repo_id_of_source(kind, source_id) not in names:
                    if self._variants(repo_id_of_source(kind, source_id)):  # pulls its variants, checked
                        names.add(repo_id_of_source(kind, source_id))
        return sorted(names)

    def settings(self, repo_id: str) -> RepoSettings:
        variants = self._require(repo_id)
        return RepoSettings(created=min(v.commit.timestamp for v in variants.values()))

    def refs(self, repo_id: str) -> RepoRefs:
        variants = self._require(repo_id)
        branches = {"main": self._main(repo_id, variants).commit.sha}
        for variant in sorted(variants.values(), key=lambda v: v.commit.timestamp):
            branches[variant_branch(variant.key.config_hash)] = variant.commit.sha  # newest upstream revision wins
        return RepoRefs(branches=branches, tags={}, pull_requests={})

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        variants = self._require(repo_id)
        revision = revision or "main"
        if is_commit_sha(revision):
            if revision in variants:
                return revision
        else:
            sha = self.refs(repo_id).branches.get(revision)
            if sha is not None:
                return sha
        raise UnknownRevisionError(f"Revision {revision!r} is not a variant of {repo_id!r} on this server.")

    def get_commit(self, repo_id: str, sha: str) -> CommitRecord:
        variant = self._require(repo_id).get(sha)
        if variant is None:
            raise UnknownRevisionError(f"Commit {sha!r} is not a variant of {repo_id!r} on this server.")
        return variant.commit

    def history(self, repo_id: str, revision: str | None = None) -> list[CommitRecord]:
        return [self.get_commit(repo_id, self.resolve(repo_id, revision))]

    def file_entry(self, repo_id: str, sha: str, path: str) -> FileEntry:
        entry = self.get_commit(repo_id, sha).files.get(path)
        if entry is None:
            raise UnknownEntryError(f"{path!r} is not a file of {repo_id!r} at {sha[:12]}.")
        return entry

    def open_file(self, repo_id: str, sha: str, entry: FileEntry) -> Path:
        variant = self._require(repo_id).get(sha)
        local = variant.path.joinpath(*entry.path.split("/")) if variant else None
        if local is None or not local.is_file() or local.stat().st_size != entry.size:
            raise UnknownEntryError(f"{entry.path!r} of {repo_id!r} at {sha[:12]} is no longer in the cache (evicted).")
        return local

    # -- scanning -------------------------------------------------------------------------------
    def _require(self, repo_id: str) -> dict[str, _Variant]:
        variants = self._variants(repo_id)
        if not variants:
            raise UnknownRepoError(f"Repository {repo_id!r} has no optimized variant on this server.")
        return variants

    def _variants(self, repo_id: str) -> dict[str, _Variant]:
        kind, source_id = self._source_of(repo_id)
        folder = repo_dir(self.cache.root, kind, source_id) / ENTRIES_DIR
        self._sync(kind, source_id, folder)
        try:
            stamp = folder.stat().st_mtime_ns  # renames into the folder (commit, removal) change it
        except OSError:
            return {}
        with self._lock:
            known = self._scanned.get(repo_id)
            if known is not None and known[0] == stamp:
                return known[1]
        variants = {}
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            variant = self._read_variant(path)
            if variant is not None and variant.key.kind == kind:
                variants[variant.commit.sha] = variant
        with self._lock:
            self._scanned[repo_id] = (stamp, variants)
        return variants

    def _tier_sources(self, tier) -> list[tuple[str, str]]:
        """The tier's sources, listed at most once per `shared_refresh_seconds` (a LIST request each time)."""
        now = time.monotonic()
        with self._lock:
            if self._sources is not None and now - self._sources[0] < self.shared_refresh_seconds:
                return self._sources[1]
        sources = self._reachable(tier.sources, None)
        if sources is None:
            return []  # unreachable: try again on the next listing
        with self._lock:
            self._sources = (now, sources)
        return sources

    def _sync(self, kind: str, source_id: str, folder: Path) -> None:
        """Pull the variants of a source that the shared tier has and the local cache lacks."""
        tier = self.cache.shared
        if tier is None or kind not in _SERVED_KINDS:
            return
        now = time.monotonic()
        with self._lock:
            last = self._synced.get((kind, source_id))
            if last is not None and now - last < self.shared_refresh_seconds:
                return
            self._synced[(kind, source_id)] = now
        local = frozenset(path.name for path in folder.iterdir()) if folder.is_dir() else frozenset()
        for key in self._reachable(lambda: tier.keys(kind, source_id, skip=local), []):
            if entry_folder_name(key) not in local:
                self.cache.examine(key)  # pulls it (checked file by file), or warns and leaves it out

    def _reachable(self, call, default):
        from pdo_hub.cache._objects import SharedCacheError

        try:
            return call()
        except SharedCacheError as err:  # serve what the local cache has; the next refresh tries again
            logger.warning("%s Serving the local cache only for now.", err)
            return default

    def _read_variant(self, path: Path) -> _Variant | None:
        try:
            manifest = read_manifest(path)
            key = CacheKey.from_dict(manifest["key"])
        except (ManifestError, InvalidRepoIdError, KeyError, TypeError) as err:
            logger.debug("Not serving %s: %s", path, err)
            return None
        if entry_dir(self.cache.root, key) != path or not self._served(key):
            return None
        files = {name: self._file_entry(path, name, info) for name, info in manifest["files"].items()
                 if name not in _HIDDEN_FILES}
        digest = hashlib.sha1(b"pdo-hub variant\n")
        digest.update(json.dumps(manifest["key"], sort_keys=True).encode())
        for name in sorted(files):
            digest.update(f"\n{files[name].sha256} {name}".encode())
        commit = CommitRecord(sha=digest.hexdigest(), parent=None, message=f"pdo-hub variant of {key.source_id}",
                              description=f"Optimized from revision {key.revision}", timestamp=float(manifest.get("created_at", 0.0)),
                              files=files)
        return _Variant(key, path, commit)

    def _file_entry(self, folder: Path, name: str, info: dict) -> FileEntry:
        size, sha256 = int(info["size"]), str(info["sha256"])
        if is_lfs(name, size):
            # The Hub's oid of an LFS file is the git sha1 of its pointer file: no need to read the content.
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
            oid = hashlib.sha1(git_blob_sha1_header(len(pointer)) + pointer).hexdigest()
        else:
            oid = self._small_oids.get(sha256)
            if oid is None:
                content = folder.joinpath(*name.split("/")).read_bytes()
                oid = hashlib.sha1(git_blob_sha1_header(len(content)) + content).hexdigest()
                self._small_oids[sha256] = oid
        return FileEntry(path=name, size=size, oid=oid, sha256=sha256)

    def _main(self, repo_id: str, variants: dict[str, _Variant]) -> _Variant:
        newest_first = sorted(variants.values(), key=lambda v: v.commit.timestamp, reverse=True)
        for wanted in self.main_variant_hashes:
            for variant in newest_first:
                if variant.key.config_hash == wanted:
                    return variant
        return newest_first[0]

    @staticmethod
    def _source_of(repo_id: str) -> tuple[str, str]:
        namespace, _, name = repo_id.partition("/")
        for kind, prefix in _KIND_NAMESPACE.items():
            if namespace == prefix and name:
                return kind, name
        return "huggingface", repo_id

    @staticmethod
    def _served(key: CacheKey) -> bool:
        return key.kind in _SERVED_KINDS


def default_main_hashes(config: object = None) -> tuple[str, ...]:
    """The variant hashes `main` prefers: the given config (default: the seed's) loaded with AutoModel / torchvision."""
    from pdo_hub.core.config import load_config
    from pdo_hub.hub import _keys

    opt_config = load_config(config)
    loaders = ({"library": "transformers", "auto_class": "AutoModel", "kwargs": {}},)
    return tuple(_keys.variant_hash(opt_config, loader) for loader in loaders)


__all__ = ["CacheRepoStore", "VARIANT_BRANCH_PREFIX", "default_main_hashes", "repo_id_of", "variant_branch"]
