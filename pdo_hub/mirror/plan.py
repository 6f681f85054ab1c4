"""Deciding what each manifest entry needs, with at most one cheap metadata request per entry.

A Hub entry costs one `model_info` call to learn the commit its branch points to now (none when the
manifest pins a 40-hex commit); torchvision weights are immutable files named by their hash, so they
need none. With the commit known, the cache key is computed without loading anything, and an entry
whose key is cached is skipped. A new upstream commit is a new key, so it is picked up. With a shared
tier (`PDO_HUB_SHARED_CACHE`) "cached" includes an entry another machine published there: the lookup
pulls it into the local cache (checked file by file), so every driver and worker skips it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.hub import revisions
from pdo_hub.hub.calibration import read_calibration
from pdo_hub.mirror.manifest import MirrorEntry

logger = logging.getLogger(__name__)

#: What an entry needs.
SKIP, OPTIMIZE, FETCH, MISSING = "skip", "optimize", "fetch", "missing"
# Under the cache root (dot folders are not entries): what torchvision weights specs resolve to.
_MEMO_NAME = ".mirror/torchvision_weights.json"


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
    from pdo_hub.hub import _keys
    from pdo_hub.hub.torchvision_models import vision_loader_record

    source_id, file_name = _weights_names(entry.source.id, entry.source.weights or "DEFAULT", cache)
    sha = cache.resolve_ref("torchvision", source_id, file_name) or _hashed_weights_file(file_name)
    if sha is None:
        return None, None
    loader = vision_loader_record(entry.source.id, {}, read_calibration(entry.calibration))
    return sha, CacheKey("torchvision", source_id, sha, _keys.variant_hash(entry.config, loader))


def _weights_names(name: str, weights: str, cache: OptimizedCache) -> tuple[str, str]:
    """(weights source id, weights file name) of `name:weights`, remembered per torchvision version.

    Resolving `DEFAULT` needs torchvision's enums, and importing torchvision costs more than the whole
    rest of a cached mirror run; what a name resolves to only changes with the torchvision version.
    """
    from importlib.metadata import version

    memo_path = cache.root / _MEMO_NAME
    memo_key = f"{name}:{weights}@torchvision=={version('torchvision')}"
    memo = _read_memo(memo_path)
    if isinstance(memo.get(memo_key), list) and len(memo[memo_key]) == 2:
        return tuple(memo[memo_key])
    import torchvision.models

    from pdo_hub.hub.torchvision_models import resolve_weights, weights_file, weights_source_id

    member = resolve_weights(torchvision.models.get_model_builder(name), weights)
    names = (weights_source_id(member), weights_file(member).name)
    _write_memo(memo_path, {**memo, memo_key: list(names)})
    return names


def _hashed_weights_file(file_name: str) -> str | None:
    """sha256 of the weights file in the torch hub cache, when it was downloaded but never recorded."""
    from pathlib import Path

    import torch.hub

    from pdo_hub.hub._files import sha256_of

    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    return sha256_of(path) if path.is_file() else None


def _read_memo(path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new memo
    except OSError as err:  # a read-only cache: the next run resolves again
        logger.debug("Cannot remember torchvision weights names in %s: %s", path, err)


def _original_cached(repo_id: str, sha: str) -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, revision=sha, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return False
    return True
