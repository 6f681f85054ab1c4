"""`pdo-hub demo`: the mirror's main job, offline (mirror -> serve -> load on a second process)."""

from __future__ import annotations

import argparse
import json

from pdo_hub.cli._output import print_report
from pdo_hub.cli._progress import progress


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.mirror_demo import run_mirror_demo

    with progress(not args.json):
        result = run_mirror_demo(args.config, args.output, workdir=args.workdir, fresh=args.fresh)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    mirror, client = result["mirror"]["entries"][0], result["client"]
    print(f"Mirror: {mirror['source']} {mirror['status']} ({mirror['config']}, {mirror['seconds']:.1f} s)")
    print(f"Served and loaded by a second process through HF_ENDPOINT={client['endpoint']}: "
          f"{client['load_seconds']:.2f} s, optimizer runs: {client['optimizer_runs']}")
    print(f"(the sentence-embedding cosine below is measured there, on {client['held_out_sentences']} sentences "
          "the optimizer never saw)")
    print()
    print_report(result["report"])
    return 0


def register(commands) -> None:
    demo = commands.add_parser("demo", help="mirror, serve and load the bundled all-MiniLM-L6-v2, offline")
    demo.add_argument("--config", default=None, help="preset name (conservative, aggressive, quality) or YAML file")
    demo.add_argument("--output", default=None, help="also copy the optimized variant (weights, recipe, report, card) here")
    demo.add_argument("--workdir", default=None, help="the demo's folder (default ~/.cache/pdo_hub_demo)")
    demo.add_argument("--fresh", action="store_true", help="start from an empty work folder (optimize again)")
    demo.add_argument("--json", action="store_true", help="print everything as JSON")
    demo.set_defaults(run=_run)
