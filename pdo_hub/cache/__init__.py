"""The optimized cache: keys, Hub-like layout, atomic commit, per-key locks, integrity, eviction.

Layer 4: imports nothing from pdo_hub but `pdo_hub.core`. See `layout` for the folder structure and
`inventory` for listing, bulk verification and removal (what `pdo-hub cache` prints).
"""

from pdo_hub.cache._files import STALE_TMP_SECONDS
from pdo_hub.cache.entry import CacheEntry
from pdo_hub.cache.inventory import EntryFilter, EntrySummary
from pdo_hub.cache.keys import (
    CACHE_FORMAT_VERSION,
    SOURCE_KINDS,
    CacheKey,
    validate_config_hash,
    validate_ref_name,
    validate_revision,
    validate_source_id,
)
from pdo_hub.cache.layout import entry_folder_name, repo_folder_name
from pdo_hub.cache.manifest import MANIFEST_NAME, RESERVED_NAMES, sha256_file
from pdo_hub.cache.store import OptimizedCache

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "RESERVED_NAMES",
    "SOURCE_KINDS",
    "STALE_TMP_SECONDS",
    "CacheEntry",
    "CacheKey",
    "EntryFilter",
    "EntrySummary",
    "OptimizedCache",
    "entry_folder_name",
    "repo_folder_name",
    "sha256_file",
    "validate_config_hash",
    "validate_ref_name",
    "validate_revision",
    "validate_source_id",
]
