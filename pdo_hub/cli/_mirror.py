"""`pdo-hub mirror MANIFEST.yaml`: keep every model of a manifest optimized in the cache."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from pdo_hub.cli._optimize import print_summary
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.core.errors import ConfigError
    from pdo_hub.mirror import MirrorOptions, load_manifest, run_manifest

    if args.manifest is None:  # `mirror --ray MANIFEST`: argparse gave the manifest to --ray's optional ADDRESS
        if not args.ray or not args.ray.endswith((".yaml", ".yml")):
            raise ConfigError("mirror needs a MANIFEST.yaml (give --ray's ADDRESS, if any, after it).")
        args.manifest, args.ray = args.ray, ""
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: use 1 or more.")
    ray = _ray_options(args)
    manifest = load_manifest(args.manifest)
    options = MirrorOptions(jobs=args.jobs or 1, dry_run=args.dry_run, offline=args.offline, push_org=args.push,
                            progress=not args.quiet, ray=ray)
    # Stdout carries the summary (or the JSON) only: what a library prints there while the run goes on
    # (Ray's driver prints its "(raylet) A worker died ..." notices to stdout) is moved to stderr.
    with progress(not args.quiet), contextlib.redirect_stdout(sys.stderr):
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


def _ray_options(args: argparse.Namespace):
    from pdo_hub.core.errors import ConfigError
    from pdo_hub.core.sizes import parse_size
    from pdo_hub.mirror import RayOptions
    from pdo_hub.mirror.ray_jobs import require_ray

    ray_flags = [name for name in ("ray_cpus", "ray_memory", "ray_retries") if getattr(args, name) is not None]
    if args.ray is None:
        if ray_flags:
            raise ConfigError(f"--{ray_flags[0].replace('_', '-')} is for --ray runs: add --ray [ADDRESS].")
        return None
    if args.jobs is not None:
        raise ConfigError("--jobs and --ray: on Ray the cluster's free CPUs decide how many builds run at once "
                          "(--ray-cpus sets each build's share).")
    if args.ray_cpus is not None and args.ray_cpus <= 0 or args.ray_retries is not None and args.ray_retries < 0:
        raise ConfigError("--ray-cpus must be more than 0 and --ray-retries 0 or more.")
    require_ray()  # before planning: a missing Ray is said at once, not after the metadata requests
    return RayOptions(address=args.ray or None, cpus=args.ray_cpus or 1.0,
                      memory=parse_size(args.ray_memory, "--ray-memory") if args.ray_memory else None,
                      retries=3 if args.ray_retries is None else args.ray_retries)


def register(commands) -> None:
    parser = commands.add_parser("mirror", help="sync the models of a manifest into the optimized cache",
                                 description="Mirror and optimize every model a YAML manifest lists (see configs/mirror-example.yaml). "
                                             "Cached entries are skipped after one metadata request each.")
    parser.add_argument("manifest", nargs="?", help="YAML manifest: defaults + a list of models")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="models optimized at once, each in its own process (default 1)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="build each entry as a Ray task (pip install 'pdo-hub[scale]'): with no ADDRESS, the cluster "
                             "ray.init() finds (RAY_ADDRESS, else one started here with `ray start`), else a new local one "
                             "for this run; ADDRESS: auto, HOST:PORT or ray://HOST:PORT")
    parser.add_argument("--ray-cpus", type=float, default=None, metavar="N", help="CPUs each Ray build reserves (default 1)")
    parser.add_argument("--ray-memory", default=None, metavar="SIZE",
                        help="memory each Ray build reserves, e.g. 4GiB (default: 3x the model's weights + 512 MiB)")
    parser.add_argument("--ray-retries", type=int, default=None, metavar="N",
                        help="times a Ray build is rerun after its worker was lost (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be fetched or optimized")
    parser.add_argument("--offline", action="store_true", help="cache only: no network at all")
    parser.add_argument("--push", metavar="ORG", default=None, help="push each variant to ORG/<name>-pdo-<preset> after optimizing")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
