"""Running a manifest: plan every entry, build what is missing (in worker processes with `jobs` > 1, or
as Ray tasks with `ray`: see `ray_jobs`), push when asked, and collect one result per entry. One failing
entry never stops the others.

Builds of different models run in separate processes, not threads: torch's thread pool and the
loaders' process-wide switches are shared by every thread of a process. Two mirrors (or two workers)
asking for the same key meet at the cache's per-key lock, so it is optimized once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from pdo_hub.cache import OptimizedCache
from pdo_hub.optimizers.report import report_summary
from pdo_hub.mirror.manifest import Manifest, MirrorEntry
from pdo_hub.mirror.plan import FETCH, MISSING, OPTIMIZE, SKIP, Plan, plan_entry
from pdo_hub.mirror.ray_jobs import RayOptions, build_on_ray

logger = logging.getLogger("pdo_hub.mirror")

#: Result statuses, as the summary counts them.
STATUSES = ("fetched", "optimized", "skipped", "failed")


@dataclass
class EntryResult:
    """What happened to one entry (JSON-able through `to_dict`)."""

    source: str
    config: str
    status: str
    revision: str | None = None
    entry_path: str | None = None
    report: dict | None = field(default=None, repr=False)
    pushed_to: str | None = None
    error: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**report_summary(self.report), "source": self.source, "config": self.config, "status": self.status,
                "revision": self.revision, "entry": self.entry_path, "pushed_to": self.pushed_to, "error": self.error,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class MirrorOptions:
    """How to run a manifest.

    Attributes:
        jobs: Builds at once (worker processes when > 1).
        dry_run: Only plan: say what would be fetched or optimized.
        offline: Cache only, no network.
        push_org: Push each variant to `ORG/<name>-pdo-<config>` (an entry's `push:` names its own repo).
        progress: Show worker progress lines on stderr.
        ray: Run the builds as tasks on a Ray cluster (None: on this machine).
    """

    jobs: int = 1
    dry_run: bool = False
    offline: bool = False
    push_org: str | None = None
    progress: bool = False
    ray: RayOptions | None = None


def run_manifest(manifest: Manifest, options: MirrorOptions = MirrorOptions(),
                 on_result: Callable[[EntryResult], None] | None = None) -> list[EntryResult]:
    """Mirror every entry of `manifest`; results in manifest order."""
    cache = OptimizedCache()
    results: list[EntryResult | None] = [None] * len(manifest.entries)
    to_build: list[tuple[int, Plan]] = []
    for index, entry in enumerate(manifest.entries):
        started = time.perf_counter()
        try:
            plan = plan_entry(entry, offline=options.offline, cache=cache)
        except Exception as err:  # noqa: BLE001 -- one bad entry must not stop the others
            results[index] = _failure(entry, err, started)
            continue
        logger.info("%s (%s): %s", entry.source, entry.config_label, _describe(plan))
        if plan.action == MISSING:
            results[index] = _result(entry, "failed", plan, started, error="not in the optimized cache and --offline is set")
        elif options.dry_run:
            results[index] = _result(entry, f"would {plan.action}" if plan.action != SKIP else "skipped", plan, started)
        elif plan.action == SKIP:
            results[index] = _skipped(plan, cache, options, started)
        else:
            to_build.append((index, plan))
    for index, result in _build_all(to_build, options):
        results[index] = result
    final = [result for result in results if result is not None]
    if on_result is not None:
        for result in final:
            on_result(result)
    return final


def _build_all(to_build: list[tuple[int, Plan]], options: MirrorOptions):
    if options.ray is not None and to_build:  # only when something is built: a cached run never joins Ray
        yield from build_on_ray(to_build, options)
        return
    if options.jobs <= 1 or len(to_build) <= 1:
        for index, plan in to_build:
            yield index, build_plan(plan, options)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=options.jobs, mp_context=context) as pool:
        futures = {pool.submit(build_plan, plan, options): (index, plan) for index, plan in to_build}
        for future in concurrent.futures.as_completed(futures):
            index, plan = futures[future]
            try:
                yield index, future.result()
            except Exception as err:  # noqa: BLE001 -- a worker that died (killed, out of memory)
                yield index, _failure(plan.entry, err, time.perf_counter())


def build_plan(plan: Plan, options: MirrorOptions) -> EntryResult:
    """Fetch/optimize one planned entry (runs in a worker process when jobs > 1, a Ray task with ray); never raises."""
    entry, started = plan.entry, time.perf_counter()
    try:
        if plan.action == FETCH:
            from pdo_hub.hub import _retry
            from pdo_hub.hub.revisions import record_hf_cache_ref

            _retry.download_snapshot(entry.source.id, plan.revision)  # bounded retries, files checked
            # Pinned to the sha, the client writes no refs/<branch>: write it so stock offline loads by branch work.
            record_hf_cache_ref(entry.source.id, entry.source.revision, plan.revision, None)
            return _result(entry, "fetched", plan, started)
        model = _optimize(entry, plan)
        status = "skipped" if model.pdo_cache_status == "hit" else "optimized"
        result = _result(entry, status, plan, started, model=model)
        return _push(result, entry, options)
    except Exception as err:  # noqa: BLE001 -- reported in the summary, the other entries go on
        return _failure(entry, err, started)


def _optimize(entry: MirrorEntry, plan: Plan):
    from pdo_hub.hub import revisions
    from pdo_hub.sources import optimize_source

    spec = entry.source
    if spec.kind == "huggingface" and plan.revision:
        spec = replace(spec, revision=plan.revision)  # pinned: the metadata request is not repeated
    model = optimize_source(spec, config=entry.config, calibration=entry.calibration, auto_class=entry.auto_class,
                            architecture=entry.architecture)
    if entry.source.kind == "huggingface" and plan.revision:
        revisions.record_ref(OptimizedCache(), entry.source.id, entry.source.revision, plan.revision)
        if model.pdo_cache_status == "built":  # the original was just downloaded by sha: name its branch too
            revisions.record_hf_cache_ref(entry.source.id, entry.source.revision, plan.revision, None)
    return model


def _skipped(plan: Plan, cache: OptimizedCache, options: MirrorOptions, started: float) -> EntryResult:
    entry = plan.entry
    if plan.key is None:
        return _result(entry, "skipped", plan, started)
    found = cache.lookup(plan.key, verify=False)
    result = _result(entry, "skipped", plan, started, entry_path=str(found.path) if found else None,
                     report=found.read_json("optimization_report.json") if found else None)
    return _push(result, entry, options) if (options.push_org or entry.push) else result


def _push(result: EntryResult, entry: MirrorEntry, options: MirrorOptions) -> EntryResult:
    target = entry.push or (f"{options.push_org}/{push_name(entry)}" if options.push_org else None)
    if target is None or result.entry_path is None:
        return result
    from pdo_hub.push import push_entry

    try:
        # An ONNX push calibrates its int8 on the entry's own sentences (push_entry ignores it otherwise).
        calibration = str(entry.calibration) if entry.calibration is not None and entry.calibration.is_file() else None
        pushed = push_entry(result.entry_path, target, format=entry.push_format, calibration=calibration)
    except Exception as err:  # noqa: BLE001
        result.status, result.error = "failed", f"push to {target} failed: {_message(err)}"
        return result
    result.pushed_to = pushed.get("url") or target
    return result


def push_name(entry: MirrorEntry) -> str:
    """Repo name of a pushed variant: `<source name>-pdo-<preset or config hash>`."""
    label = entry.config_label if entry.config_label in ("conservative", "aggressive", "quality", "default") \
        else entry.config.config_hash()[:8]
    return f"{entry.source.short_name}-pdo-{label}"[:96]


def _result(entry: MirrorEntry, status: str, plan: Plan, started: float, *, model: Any = None,
            entry_path: str | None = None, report: dict | None = None, error: str = "") -> EntryResult:
    if model is not None:
        entry_path, report = str(model.pdo_cache_path), model.pdo_report
    return EntryResult(source=str(entry.source), config=entry.config_label, status=status, revision=plan.revision,
                       entry_path=entry_path, report=report, error=error, seconds=time.perf_counter() - started)


def _failure(entry: MirrorEntry, err: BaseException, started: float) -> EntryResult:
    logger.info("%s failed: %s", entry.source, _message(err))
    return EntryResult(source=str(entry.source), config=entry.config_label, status="failed", error=_message(err),
                       seconds=time.perf_counter() - started)


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:500]}"


def _describe(plan: Plan) -> str:
    where = f" at {plan.revision[:12]}" if plan.revision else ""
    return {SKIP: f"cached{where}, skipping", OPTIMIZE: f"to optimize{where}", FETCH: f"original to fetch{where}",
            MISSING: "not cached (offline)"}[plan.action]
