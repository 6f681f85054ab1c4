"""What is in the cache, for people: entry summaries, selection by source/revision/hash, bulk verify and removal.

The `pdo-hub cache` commands print what these functions return; nothing here prints.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pdo_hub.cache._files import discard, last_access_ns
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.integrity import Check, Verdict, examine, quarantine
from pdo_hub.cache.keys import CacheKey
from pdo_hub.cache.layout import CONFIG_HASH_PREFIX, entry_folders, parse_repo_folder
from pdo_hub.cache.store import OptimizedCache
from pdo_hub.core.errors import CacheError, ConfigError

logger = logging.getLogger(__name__)

# Records the hub layer writes into every entry (`pdo_hub.hub.flow.write_entry`), read here only to describe
# entries: where the original came from (with the optimization config's hash) and the optimization report.
SOURCE_RECORD = "pdo_source.json"
REPORT_FILE = "optimization_report.json"

# What `verify` may do to a damaged entry besides reporting it.
REPAIRS = ("quarantine", "remove")


@dataclass(frozen=True)
class EntrySummary:
    """One entry as `pdo-hub cache ls` shows it.

    Attributes:
        entry: The entry.
        config_hash: The optimization config's hash from the source record (the key holds the variant
            hash, which also covers loader arguments); None when the entry has no source record.
        methods: What the optimizer applied (`optimizations_applied` of the report); empty when none.
        last_used: Last recorded use, seconds since the epoch.
    """

    entry: CacheEntry
    config_hash: str | None
    methods: tuple[str, ...]
    last_used: float

    @property
    def key(self) -> CacheKey:
        return self.entry.key

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in ISO 8601, UTC)."""
        key = self.entry.key
        return {"kind": key.kind, "source_id": key.source_id, "revision": key.revision,
                "config_hash": self.config_hash, "variant_hash": key.config_hash, "methods": list(self.methods),
                "size_bytes": self.entry.total_bytes, "created_at": _iso(self.entry.created_at),
                "last_used": _iso(self.last_used), "path": str(self.entry.path)}


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a command acts on; every given criterion must match (an empty filter matches all).

    Attributes:
        sources: Globs for the source id (`org/*`, `*MiniLM*`); any one matching is enough.
        kind: Source kind (`huggingface`, `torchvision`, `local`).
        revision: Prefix of the revision (commit sha or file sha256).
        config_hash: Prefix of the config hash or of the variant hash.
    """

    sources: tuple[str, ...] = ()
    kind: str | None = None
    revision: str | None = None
    config_hash: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.sources or self.kind or self.revision or self.config_hash)

    def matches(self, kind: str, source_id: str, revision: str, hashes: tuple[str, ...]) -> bool:
        """True when an entry with these ids is selected (`hashes`: its config and variant hashes)."""
        return (
            (not self.sources or any(fnmatch.fnmatchcase(source_id, pattern) for pattern in self.sources))
            and (self.kind is None or kind == self.kind)
            and (not self.revision or revision.startswith(self.revision.lower()))
            and (not self.config_hash or any(h.startswith(self.config_hash.lower()) for h in hashes))
        )


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of `verify`: how many entry folders were checked, the damaged ones, and what was done."""

    checked: int
    damaged: tuple[Verdict, ...]
    skipped: tuple[Verdict, ...]
    moved_to: dict[Path, Path | None]


def summarize(entry: CacheEntry) -> EntrySummary:
    """Describe one entry from its source record and report (missing or unreadable ones leave blanks)."""
    source, report = _optional_json(entry, SOURCE_RECORD), _optional_json(entry, REPORT_FILE)
    config_hash = source.get("config_hash")
    methods = report.get("optimizations_applied") or []
    return EntrySummary(entry, config_hash if isinstance(config_hash, str) else None,
                        tuple(str(m) for m in methods) if isinstance(methods, list) else (),
                        last_access_ns(entry) / 1e9)


def find(cache: OptimizedCache, selection: EntryFilter = EntryFilter()) -> list[EntrySummary]:
    """Summaries of the complete entries `selection` matches, by source id then revision (no re-hashing)."""
    found = [summary for summary in map(summarize, cache.list_entries()) if _selected(selection, summary)]
    return sorted(found, key=lambda s: (s.key.kind, s.key.source_id, s.key.revision, s.key.config_hash))


def remove(cache: OptimizedCache, selection: EntryFilter, *, dry_run: bool = False) -> list[EntrySummary]:
    """Remove the entries `selection` matches (or only list them with `dry_run`); returns them.

    Raises:
        ConfigError: for an empty selection (a typo must never empty the whole cache; select `*` for that).
    """
    if selection.empty:
        raise ConfigError("Select what to remove: a source id glob ('*' for everything), a revision or a config hash.")
    chosen = find(cache, selection)
    if not dry_run:
        for summary in chosen:
            cache.remove(summary.key)
    return chosen


def verify(cache: OptimizedCache, selection: EntryFilter = EntryFilter(), *, repair: str | None = None) -> VerifyResult:
    """Re-hash every file of every selected entry folder against its manifest, and check that no layer's
    weights are stored in another's place (`storage.weights_problem`); never deletes by default.

    Args:
        cache: The cache.
        selection: Which entries to check (folders with an unreadable manifest are matched by their name).
        repair: None (report only), `quarantine` (move damaged folders to `.quarantine/`) or `remove`.

    Raises:
        ConfigError: for an unknown `repair`.
    """
    if repair not in (None, *REPAIRS):
        raise ConfigError(f"repair={repair!r}: use None or one of {list(REPAIRS)}.")
    from pdo_hub.optimizers.storage import WEIGHTS_NAME, weights_problem  # torch: only `verify` needs it

    root = cache.root
    checked, damaged, skipped, moved = 0, [], [], {}
    for path in entry_folders(root):
        # Sizes first (cheap), so the selection can use the manifest's key before any file is hashed.
        verdict = examine(root, path, Check.SIZES)
        if not _folder_selected(selection, verdict):
            continue
        if verdict.entry is not None:
            verdict = examine(root, path, Check.FULL)
        if verdict.entry is not None and WEIGHTS_NAME in verdict.entry.manifest["files"]:
            problem = weights_problem(path)  # intact bytes that hold one layer's weights in another's place
            if problem:
                verdict = Verdict(path, None, (f"{WEIGHTS_NAME}: {problem}",), True, verdict.key)
        checked += 1
        if verdict.damaged:
            damaged.append(verdict)
            moved[path] = _repair(root, path, repair)
        elif verdict.entry is None:
            skipped.append(verdict)
    return VerifyResult(checked, tuple(damaged), tuple(skipped), moved)


def _repair(root: Path, path: Path, repair: str | None) -> Path | None:
    if repair == "quarantine":
        return quarantine(root, path)
    if repair == "remove":
        discard(root, path)
    return None


def _selected(selection: EntryFilter, summary: EntrySummary) -> bool:
    key = summary.key
    hashes = (key.config_hash,) + ((summary.config_hash,) if summary.config_hash else ())
    return selection.matches(key.kind, key.source_id, key.revision, hashes)


def _folder_selected(selection: EntryFilter, verdict: Verdict) -> bool:
    if selection.empty:
        return True
    if verdict.entry is not None:
        return _selected(selection, summarize(verdict.entry))
    if verdict.key is not None:
        key = verdict.key
        return selection.matches(key.kind, key.source_id, key.revision, (key.config_hash,))
    # No readable key: the folder names say `{kind}--{id}/entries/{revision}--{hash prefix}--v{n}`.
    identity = parse_repo_folder(verdict.path.parent.parent.name)
    if identity is None:
        return False
    revision, _, rest = verdict.path.name.partition("--")
    # Only a prefix of the variant hash is in the folder name: compare that much of the selection.
    short = replace(selection, config_hash=(selection.config_hash or "")[:CONFIG_HASH_PREFIX] or None)
    return short.matches(*identity, revision, (rest.partition("--")[0],))


def _optional_json(entry: CacheEntry, name: str) -> dict[str, Any]:
    if name not in entry.manifest["files"]:
        return {}
    try:
        data = entry.read_json(name)
    except CacheError as err:
        logger.debug("Cannot describe %s from %s: %s", entry.path, name, err)
        return {}
    return data if isinstance(data, dict) else {}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
