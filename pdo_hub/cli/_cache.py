"""`pdo-hub cache ls | verify | rm | prune`: look after the optimized cache.

The work is done by `pdo_hub.cache` (`inventory`, `OptimizedCache.prune`); these commands only print.
"""

from __future__ import annotations

import argparse
import json
import time

from pdo_hub.cli._output import table
from pdo_hub.core.errors import ConfigError
from pdo_hub.core.sizes import format_size, parse_size


def _selection(args: argparse.Namespace, sources: list[str]):
    from pdo_hub.cache.inventory import EntryFilter

    return EntryFilter(tuple(sources), args.kind, args.revision, args.config_hash)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _source(key) -> str:
    return f"{key.kind}:{key.source_id}"


def _line(entry) -> str:
    """One entry on one line: source, short revision, variant hash (as in its folder name) and size."""
    key = entry.key
    return f"{_source(key)} {key.revision[:12]} (variant {key.config_hash[:12]}, {format_size(entry.total_bytes)})"


def _count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _print_entries(summaries) -> None:
    rows = [(_source(s.key), s.key.revision[:12], (s.config_hash or s.key.config_hash)[:12], "+".join(s.methods) or "-",
             format_size(s.entry.total_bytes), _when(s.entry.created_at), _when(s.last_used)) for s in summaries]
    table(("source", "revision", "config", "methods", "size", "created", "last use"), rows)


def _total(summaries) -> str:
    return f"{_count(len(summaries))}, {format_size(sum(s.entry.total_bytes for s in summaries))}"


def _ls(args: argparse.Namespace) -> int:
    from pdo_hub.cache import OptimizedCache
    from pdo_hub.cache.inventory import find

    cache = OptimizedCache()
    summaries = find(cache, _selection(args, [args.source] if args.source else []))
    if args.format == "json":
        print(json.dumps({"root": str(cache.root), "entries": [s.to_dict() for s in summaries],
                          "count": len(summaries), "total_bytes": sum(s.entry.total_bytes for s in summaries)}, indent=2))
        return 0
    if summaries:
        _print_entries(summaries)
    print(f"{_total(summaries)} in {cache.root}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pdo_hub.cache import OptimizedCache
    from pdo_hub.cache.inventory import verify

    cache = OptimizedCache()
    repair = "quarantine" if args.quarantine else "remove" if args.remove else None
    result = verify(cache, _selection(args, [args.source] if args.source else []), repair=repair)
    for verdict in result.damaged:
        print(f"DAMAGED {verdict.path.relative_to(cache.root)}")
        for problem in verdict.problems:
            print(f"  {problem}")
        moved = result.moved_to.get(verdict.path)
        if repair:
            print(f"  quarantined to {moved}" if moved else "  removed")
    for verdict in result.skipped:
        print(f"skipped {verdict.path.relative_to(cache.root)}: {verdict.reason}")
    print(f"{_count(result.checked)} checked, {len(result.damaged)} damaged"
          + ("" if repair or not result.damaged else " (rerun with --quarantine or --remove to set them aside)"))
    return 1 if result.damaged else 0


def _rm(args: argparse.Namespace) -> int:
    from pdo_hub.cache import OptimizedCache
    from pdo_hub.cache.inventory import remove

    removed = remove(OptimizedCache(), _selection(args, args.patterns), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for summary in removed:
        print(f"{verb} {_line(summary.entry)}")
    print(f"{verb} {_total(removed)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from pdo_hub.cache import OptimizedCache

    limit = parse_size(args.max_size, "--max-size") if args.max_size is not None else None
    cache = OptimizedCache()
    evicted, cleared = cache.prune(limit, dry_run=args.dry_run)
    verb = "would evict" if args.dry_run else "evicted"
    for entry in evicted:
        print(f"{verb} {_line(entry)}")
    for path in cleared:
        print(f"{'would clear' if args.dry_run else 'cleared'} {path.relative_to(cache.root)}")
    if args.shared:
        tier = cache.shared
        if tier is None:
            raise ConfigError("cache prune --shared: no shared tier is set; set PDO_HUB_SHARED_CACHE (e.g. s3://bucket/prefix).")
        left = tier.prune(dry_run=args.dry_run)
        for path in left:
            print(f"{'would clear' if args.dry_run else 'cleared'} {path}")
        print(f"{'would clear' if args.dry_run else 'cleared'} {len(left)} objects that killed publishers or builders left on {tier.url}")
    remaining = cache.size_bytes() - (sum(e.total_bytes for e in evicted) if args.dry_run else 0)
    print(f"{verb} {_count(len(evicted))} ({format_size(sum(e.total_bytes for e in evicted))}), "
          f"{len(cleared)} leftovers; {format_size(remaining)} in the cache")
    return 0


def _add_selection(parser: argparse.ArgumentParser, with_source: bool = True) -> None:
    if with_source:
        parser.add_argument("--source", metavar="GLOB", help="source id glob, e.g. 'sentence-transformers/*'")
    parser.add_argument("--kind", choices=("huggingface", "torchvision", "local"), help="source kind")
    parser.add_argument("--revision", metavar="PREFIX", help="revision (commit sha / file sha256) prefix")
    parser.add_argument("--config-hash", metavar="PREFIX", help="config hash or variant hash prefix")


def register(commands) -> None:
    cache = commands.add_parser("cache", help="list, verify, remove and prune optimized cache entries",
                                description="Look after the optimized cache ($PDO_HUB_CACHE, default ~/.cache/pdo_hub).")
    actions = cache.add_subparsers(dest="cache_command", required=True)

    ls = actions.add_parser("ls", help="one line per entry, with the total")
    _add_selection(ls)
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(run=_ls)

    verify = actions.add_parser("verify", help="re-hash every file against its manifest; exit 1 on damage")
    _add_selection(verify)
    repair = verify.add_mutually_exclusive_group()
    repair.add_argument("--quarantine", action="store_true", help="move damaged entries to .quarantine/ in the cache")
    repair.add_argument("--remove", action="store_true", help="delete damaged entries (they are rebuilt on next use)")
    verify.set_defaults(run=_verify)

    rm = actions.add_parser("rm", help="remove the entries whose source id matches a glob")
    rm.add_argument("patterns", nargs="*", metavar="PATTERN", help="source id glob, e.g. 'org/*' ('*': everything)")
    _add_selection(rm, with_source=False)
    rm.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    rm.set_defaults(run=_rm)

    prune = actions.add_parser("prune", help="evict least-recently-used entries down to a size; clear leftovers")
    prune.add_argument("--max-size", metavar="SIZE",
                       help="e.g. 500MB, 2GiB, 1.5G or bytes (powers of 1024); without it only leftovers are cleared")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune.add_argument("--shared", action="store_true",
                       help="also clear the shared tier ($PDO_HUB_SHARED_CACHE) of uploads no entry names and dead "
                            "build leases, untouched for a day (what killed processes leave there)")
    prune.set_defaults(run=_prune)
