"""`pdo-hub push SOURCE --repo-id ORG/NAME`: optimize a model (or reuse its cache entry) and publish it."""

from __future__ import annotations

import argparse
import json

from pdo_hub.cli._optimize import add_config_options, config_of
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.push import push_entry
    from pdo_hub.sources import optimize_source, parse_source

    spec = parse_source(args.source)
    with progress(not args.json and not args.quiet):
        model = optimize_source(spec, config=config_of(args), calibration=args.calibration, auto_class=args.auto_class,
                                architecture=args.architecture)
        result = push_entry(model.pdo_cache_path, args.repo_id, endpoint=args.endpoint, private=args.private,
                            revision=args.revision, commit_message=args.message)
    if args.json:
        print(json.dumps({"source": str(spec), "cache_status": model.pdo_cache_status, **result}, indent=2))
        return 0
    print(f"Pushed {spec} ({', '.join(model.pdo_report.get('optimizations_applied') or []) or 'original kept'}) "
          f"to {result['repo_url']}")
    print(f"Commit: {result['commit_sha']} on {result['revision']} ({len(result['files'])} files)")
    print(f"Load it with: pdo_hub.from_pretrained({result['repo_id']!r})")
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "push", help="optimize a model and publish the variant to a Hub repo",
        description="SOURCE: hf:org/name[@revision], torchvision:name[:weights], or a local file/folder. The source "
                    "is fetched from HF_ENDPOINT; the token comes from HF_TOKEN or `hf auth login`.")
    parser.add_argument("source")
    parser.add_argument("--repo-id", required=True, help="Hub repo to push to, ORG/NAME (created if missing)")
    parser.add_argument("--endpoint", default=None, help="Hub to push to (default: HF_ENDPOINT, else huggingface.co)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default="main", help="branch to commit to (default main)")
    parser.add_argument("--message", default=None, help="commit message")
    add_config_options(parser)
    parser.add_argument("--calibration", default=None,
                        help="your inputs: a text file (one example per line) for text models, a folder of images for vision models")
    parser.add_argument("--auto-class", default="AutoModel", help="transformers Auto class for Hub repos (default AutoModel)")
    parser.add_argument("--architecture", default=None, help="torchvision model name for a local state-dict file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
