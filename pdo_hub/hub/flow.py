"""The fetch -> optimize -> cache -> load flow every source shares.

A hit loads from the entry with no network and no optimizer. A miss takes the key's file lock (a bounded
wait, `PDO_HUB_LOCK_TIMEOUT`), looks again (another process may have built it while this one waited), and
only then builds. The model is always returned as loaded back from the entry, so the first load and
every later (offline) load give identical outputs.

Every hit checks the entry's files against its manifest (re-hashing those changed since their last
check, see `pdo_hub.cache._verified`), so a flipped byte, a truncated file or an edited recipe is never
loaded. Nothing is lost when an entry cannot be used:

- damaged, or failing to load: online, it is moved to the cache's `.quarantine/` under the key's lock
  (a warning names both places) and rebuilt; offline, it is left untouched and `DamagedCacheEntryError`
  says what is wrong and how to rebuild it;
- intact but not for this install (written by a newer pdo-hub, or its recipe needs a method or optional
  package that is not installed): left in place, online and offline, with `IncompatibleCacheEntryError`
  saying what to upgrade or install (rebuilding would only hide the problem);
- intact but built for another CPU (full-range int8 kernels that need VNNI, which this CPU lacks, see
  `pdo_hub.optimizers.methods._int8_isa`): online, it is set aside like a damaged entry and rebuilt, as
  a portable variant that serves both kinds of CPU under the same key; offline, it is left in place and
  `IncompatibleCacheEntryError` names the missing instruction set and how to rebuild it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.nn as nn

from pdo_hub.cache import RESERVED_NAMES, CacheEntry, CacheKey, OptimizedCache
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import DamagedCacheEntryError, IncompatibleCacheEntryError, OfflineCacheMissError
from pdo_hub.hub import _keys
from pdo_hub.hub._entry_checks import incompatibility, missing_package, wrong_cpu
from pdo_hub.hub.card import CARD_NAME, build_card
from pdo_hub.optimizers import save_optimized
from pdo_hub.optimizers.storage import RECIPE_NAME, REPORT_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

#: Name of the JSON record in each entry that says where the original came from and how to rebuild it.
SOURCE_NAME = "pdo_source.json"
#: Names pdo-hub writes into an entry itself: a source file with one of these names is not copied.
OWN_FILE_NAMES = RESERVED_NAMES | {WEIGHTS_NAME, RECIPE_NAME, REPORT_NAME, SOURCE_NAME, CARD_NAME}


@dataclass(frozen=True)
class Request:
    """One model asked for.

    Attributes:
        key: The cache key.
        what: Human description for logs and errors (source, revision, loader).
        fetch_hint: What to run online to fill the cache, for the offline-miss error.
        offline: No network allowed (an offline miss raises).
        offline_reason: Which setting made it offline (for the error message).
        verify: Re-hash every file of the entry on load (otherwise only files changed since their last check).
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
        The model, with `pdo_cache_status` set to `"built"` (optimized here) or `"hit"` (found in the cache, or
        pulled from the shared tier after waiting on another machine's build) and `pdo_cache_path` to the entry.

    Raises:
        OfflineCacheMissError: offline and the entry is missing.
        DamagedCacheEntryError: offline and the entry is damaged or fails to load (it is left untouched).
        IncompatibleCacheEntryError: the entry needs a newer pdo-hub or a package that is not installed.
        CacheLockTimeoutError: another process held the key's lock longer than `PDO_HUB_LOCK_TIMEOUT`.
    """
    cache = cache or OptimizedCache()
    model = _load_existing(cache, request, load, locked=False)
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
        model = _load_existing(cache, request, load, locked=True)
        if model is not None:
            return model
        logger.info("Optimizing %s (cache miss).", request.what)
        built = []

        def build(folder: Path) -> None:
            # Inside the commit: with a shared tier, another machine's entry may be pulled instead (after
            # waiting on its build lease), and then nothing was built here.
            built.append(True)
            crashpoint("flow.building")
            write(folder)

        entry = cache.commit(request.key, build)
        crashpoint("flow.committed")
    crashpoint("flow.released")
    model = load(entry)
    crashpoint("flow.loaded")
    return _mark(model, entry, "built" if built else "hit")


def _load_existing(cache: OptimizedCache, request: Request, load: Callable[[CacheEntry], nn.Module], *,
                   locked: bool) -> nn.Module | None:
    """The model from the entry of `request`, or None to build it; quarantines only when `locked`."""
    verdict = cache.examine(request.key, verify=request.verify)
    if verdict is None:
        return None
    if verdict.entry is None and not verdict.damaged:
        raise IncompatibleCacheEntryError(
            f"The optimized cache entry of {request.what} at {verdict.path} cannot be used: {verdict.reason}. "
            "It was left in place."
        )
    failure: Exception | None = None
    if verdict.entry is None:
        problem = f"damaged: {verdict.reason}"
    else:
        entry = verdict.entry
        _raise_if_incompatible(entry, request, incompatibility(entry))
        try:
            model = load(entry)
        except MemoryError:
            raise  # not the entry's fault: quarantining or rebuilding would not help
        except Exception as err:
            _raise_if_incompatible(entry, request, missing_package(err), err)
            if request.offline and wrong_cpu(err) is not None:
                _raise_if_incompatible(entry, request, f"was built for another CPU ({wrong_cpu(err)}). Offline it is not "
                                       f"rebuilt; run once with network access to rebuild it for this CPU: {request.fetch_hint}", err)
            problem, failure = f"it fails to load: {type(err).__name__}: {err}", err
        else:
            cache.mark_used(entry)
            logger.debug("Loaded %s from %s.", request.what, entry.path)
            return _mark(model, entry, "hit")
    if request.offline:
        raise DamagedCacheEntryError(
            f"The optimized cache entry of {request.what} at {verdict.path} cannot be used ({problem}), and offline "
            f"mode is on ({request.offline_reason}); it was left untouched. Run once with network access to set it "
            f"aside in {cache.root / '.quarantine'} and rebuild it: {request.fetch_hint}. `pdo-hub cache verify` "
            "lists every damaged entry."
        ) from failure
    if locked:
        cache.quarantine(request.key, problem)
    else:
        logger.info("Cache entry %s cannot be used (%s); taking the lock to rebuild it.", verdict.path, problem)
    return None


def _raise_if_incompatible(entry: CacheEntry, request: Request, reason: str | None,
                           cause: Exception | None = None) -> None:
    if reason is not None:
        raise IncompatibleCacheEntryError(
            f"The optimized cache entry of {request.what} at {entry.path} {reason}. The entry was left in place."
        ) from cause


def _mark(model: nn.Module, entry: CacheEntry, status: str) -> nn.Module:
    # Plain attributes (not buffers): they describe where the model came from, not its state.
    model.pdo_cache_status = status
    model.pdo_cache_path = entry.path
    return model


def copy_source_file(file: Path, folder: Path, relative: str) -> bool:
    """Copy one file of the source into an entry folder, unless its name is one of pdo-hub's own.

    A source repo may hold a file named like pdo-hub's (`pdo_manifest.json`, `pdo_recipe.json`, ...): it is
    skipped with a log line instead of failing the build or being mistaken for pdo-hub's. Links are
    followed (the Hub client cache links into its blobs): entries hold real files.

    Returns:
        True when copied.
    """
    if relative in OWN_FILE_NAMES:
        # The source's weights and card are always replaced by the variant's: only an unexpected name is news.
        level = logging.DEBUG if relative in (WEIGHTS_NAME, CARD_NAME) else logging.INFO
        logger.log(level, "Not copying %s from the source: %r is the name of a file pdo-hub writes itself.", file, relative)
        return False
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    return True


def write_entry(folder: Path, optimized: nn.Module, report: dict, source: dict) -> None:
    """Write the files every entry has: weights + recipe + report, the source record, the model card,
    and the report's Pareto chart (`pareto.png`, when candidates were timed; the card shows it).

    The source record holds JSON values only (loader arguments are canonical already) and never a
    credential (`_keys.public_source`).
    """
    from pdo_hub.optimizers.chart import write_pareto

    source = _keys.public_source(source)
    save_optimized(optimized, folder, report=report)
    crashpoint("entry.weights_saved")
    (folder / SOURCE_NAME).write_text(json.dumps(source, indent=2, sort_keys=True), encoding="utf-8")
    chart = write_pareto(report, folder)
    build_card(report, source, chart=chart is not None).save(folder / CARD_NAME)
    crashpoint("entry.card_written")
