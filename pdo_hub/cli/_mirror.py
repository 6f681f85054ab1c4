"""`pdo-hub mirror MANIFEST.yaml`: keep every model of a manifest optimized in the cache."""

from __future__ import annotations

import argparse
import json
import sys

from pdo_hub.cli._optimize import print_summary
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.core.errors import ConfigError
    from pdo_hub.mirror import MirrorOptions, load_manifest, run_manifest

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: use 1 or more.")
    manifest = load_manifest(args.manifest)
    options = MirrorOptions(jobs=args.jobs, dry_run=args.dry_run, offline=args.offline, push_org=args.push,
                            progress=not args.quiet)
    with progress(not args.quiet):
        results = run_manifest(manifest, options)
    rows = [result.to_dict() for result in results]
    counts = {status: sum(r["status"] == status for r in rows) for status in ("fetched", "optimized", "skipped", "failed")}
    if args.json:
        print(json.dumps({"manifest": str(args.manifest), "dry_run": args.dry_run, "offline": args.offline,
                          "counts": counts, "entries": rows}, indent=2, default=str))
    else:
        print_summary(rows)
        planned = [r for r in rows if r["status"].startswith("would ")]
        extra = f", {len(planned)} to do (dry run)" if planned else ""
        print(f"{len(rows)} entries: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + extra)
        for row in rows:
            if row["pushed_to"]:
                print(f"pushed {row['source']} -> {row['pushed_to']}")
    if counts["failed"]:
        print(f"pdo-hub: {counts['failed']} of {len(rows)} entries failed", file=sys.stderr)
        return 1
    return 0


def register(commands) -> None:
    parser = commands.add_parser("mirror", help="sync the models of a manifest into the optimized cache",
                                 description="Mirror and optimize every model a YAML manifest lists (see configs/mirror-example.yaml). "
                                             "Cached entries are skipped after one metadata request each.")
    parser.add_argument("manifest", help="YAML manifest: defaults + a list of models")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="models optimized at once, each in its own process (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be fetched or optimized")
    parser.add_argument("--offline", action="store_true", help="cache only: no network at all")
    parser.add_argument("--push", metavar="ORG", default=None, help="push each variant to ORG/<name>-pdo-<preset> after optimizing")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
