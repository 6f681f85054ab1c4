"""Deciding what each manifest entry needs, with at most one cheap metadata request per entry.

A Hub entry costs one `model_info` call to learn the commit its branch points to now (none when the
manifest pins a 40-hex commit); torchvision weights are immutable files named by their hash, so they
need none. With the commit known, the cache key is computed without loading anything, and an entry
whose key is cached is skipped. A new upstream commit is a new key, so it is picked up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.hub import revisions
from pdo_hub.hub.calibration import read_calibration
from pdo_hub.mirror.manifest import MirrorEntry

logger = logging.getLogger(__name__)

#: What an entry needs.
SKIP, OPTIMIZE, FETCH, MISSING = "skip", "optimize", "fetch", "missing"


@dataclass(frozen=True)
class Plan:
    """What one entry needs.

    Attributes:
        entry: The manifest entry.
        action: `skip` (cached), `optimize` (fetch if needed, optimize, commit), `fetch` (mirror the
            original only), `missing` (offline and not cached).
        revision: The immutable revision (commit sha / file sha256), when known.
        key: The cache key, when the revision is known.
    """

    entry: MirrorEntry
    action: str
    revision: str | None = None
    key: CacheKey | None = None


def plan_entry(entry: MirrorEntry, *, offline: bool, cache: OptimizedCache) -> Plan:
    """Decide what `entry` needs (one metadata request for a Hub branch online; none offline).

    Raises:
        PdoHubError or huggingface_hub errors: the source cannot be resolved (the caller records a failure).
    """
    spec = entry.source
    if spec.kind == "huggingface":
        sha = revisions.resolve_hf_revision(spec.id, spec.revision, offline=offline, cache=cache,
                                            offline_reason="mirror --offline")
        if not entry.optimize:
            return Plan(entry, SKIP if _original_cached(spec.id, sha) else (MISSING if offline else FETCH), sha)
        key = _hub_key(entry, sha)
    elif spec.kind == "torchvision":
        sha, key = _vision_key(entry, cache)
        if key is None:
            return Plan(entry, MISSING if offline else OPTIMIZE)
    else:
        return Plan(entry, OPTIMIZE)  # local files are hashed when loaded; a cached one is a hit there
    if cache.lookup(key, verify=False) is not None:
        return Plan(entry, SKIP, sha, key)
    return Plan(entry, MISSING if offline else OPTIMIZE, sha, key)


def _hub_key(entry: MirrorEntry, sha: str) -> CacheKey:
    from pdo_hub.hub.transformers_models import hub_cache_key, loader_record

    loader = loader_record(entry.auto_class, {}, read_calibration(entry.calibration))
    return hub_cache_key(entry.source.id, sha, entry.config, loader)


def _vision_key(entry: MirrorEntry, cache: OptimizedCache) -> tuple[str | None, CacheKey | None]:
    import torchvision.models

    from pdo_hub.hub import _keys
    from pdo_hub.hub.torchvision_models import known_revision, resolve_weights, vision_loader_record, weights_source_id

    builder = torchvision.models.get_model_builder(entry.source.id)
    member = resolve_weights(builder, entry.source.weights or "DEFAULT")
    source_id = weights_source_id(member)
    sha = known_revision(source_id, member, cache)
    if sha is None:
        return None, None
    loader = vision_loader_record(entry.source.id, {}, read_calibration(entry.calibration))
    return sha, CacheKey("torchvision", source_id, sha, _keys.variant_hash(entry.config, loader))


def _original_cached(repo_id: str, sha: str) -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, revision=sha, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return False
    return True
