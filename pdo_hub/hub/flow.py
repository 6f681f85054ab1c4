"""The fetch -> optimize -> cache -> load flow every source shares.

A hit loads from the entry with no network and no optimizer. A miss takes the key's file lock, looks
again (another process may have built it while this one waited), and only then builds. The model is
always returned as loaded back from the entry, so the first load and every later (offline) load give
identical outputs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.nn as nn

from pdo_hub.cache import CacheEntry, CacheKey, OptimizedCache
from pdo_hub.core.errors import OfflineCacheMissError
from pdo_hub.hub.card import CARD_NAME, build_card
from pdo_hub.optimizers import save_optimized

logger = logging.getLogger(__name__)

#: Name of the JSON record in each entry that says where the original came from and how to rebuild it.
SOURCE_NAME = "pdo_source.json"


@dataclass(frozen=True)
class Request:
    """One model asked for.

    Attributes:
        key: The cache key.
        what: Human description for logs and errors (source, revision, loader).
        fetch_hint: What to run online to fill the cache, for the offline-miss error.
        offline: No network allowed (an offline miss raises).
        offline_reason: Which setting made it offline (for the error message).
        verify: Re-hash every file of the entry on load (sizes are always checked).
    """

    key: CacheKey
    what: str
    fetch_hint: str
    offline: bool
    offline_reason: str = ""
    verify: bool = False


def load_or_build(
    request: Request,
    load: Callable[[CacheEntry], nn.Module],
    write: Callable[[Path], None],
    cache: OptimizedCache | None = None,
) -> nn.Module:
    """Return the optimized model of `request`, building and committing it on a miss.

    Args:
        request: What is asked for.
        load: Rebuilds the model from a complete entry (no network).
        write: Fetches the original, optimizes it and writes the entry's files into a folder.
        cache: The optimized cache (default: `OptimizedCache()` at `PDO_HUB_CACHE`).

    Returns:
        The model, with `pdo_cache_status` set to `"hit"` or `"built"` and `pdo_cache_path` to the entry.

    Raises:
        OfflineCacheMissError: offline and the entry is missing or damaged.
    """
    cache = cache or OptimizedCache()
    model = _load_existing(cache, request, load)
    if model is not None:
        return model
    if request.offline:
        raise OfflineCacheMissError(
            f"{request.what} is not in the optimized cache at {cache.root}, and offline mode is on "
            f"({request.offline_reason}). To fetch and optimize it, run once with network access: "
            f"{request.fetch_hint} (same config), then retry offline."
        )
    lock = cache.lock(request.key)
    started = time.perf_counter()
    with lock:
        waited = time.perf_counter() - started
        if waited > 0.5:
            logger.info("Waited %.1f s for another process building %s.", waited, request.what)
        model = _load_existing(cache, request, load)
        if model is not None:
            return model
        logger.info("Optimizing %s (cache miss).", request.what)
        entry = cache.commit(request.key, write)
    model = load(entry)
    return _mark(model, entry, "built")


def _load_existing(cache: OptimizedCache, request: Request, load: Callable[[CacheEntry], nn.Module]) -> nn.Module | None:
    entry = cache.lookup(request.key, verify=request.verify)
    if entry is None:
        return None
    try:
        model = load(entry)
    except Exception as err:  # any failure to rebuild means the entry cannot be trusted: rebuild it
        logger.warning("Cache entry %s cannot be loaded (%s: %s); removing it.", entry.path, type(err).__name__, err)
        cache.remove(request.key)
        return None
    logger.debug("Loaded %s from %s.", request.what, entry.path)
    return _mark(model, entry, "hit")


def _mark(model: nn.Module, entry: CacheEntry, status: str) -> nn.Module:
    # Plain attributes (not buffers): they describe where the model came from, not its state.
    model.pdo_cache_status = status
    model.pdo_cache_path = entry.path
    return model


def write_entry(folder: Path, optimized: nn.Module, report: dict, source: dict) -> None:
    """Write the files every entry has: weights + recipe + report, the source record, the model card."""
    save_optimized(optimized, folder, report=report)
    (folder / SOURCE_NAME).write_text(json.dumps(source, indent=2, sort_keys=True, default=str), encoding="utf-8")
    build_card(report, source).save(folder / CARD_NAME)
