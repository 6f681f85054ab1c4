"""`pdo-hub demo`: the main job, offline."""

from __future__ import annotations

import argparse
import json

from pdo_hub.cli._output import print_report


def _run(args: argparse.Namespace) -> int:
    from pdo_hub.demo import run_demo

    report = run_demo(args.config, args.output)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return 0


def register(commands) -> None:
    demo = commands.add_parser("demo", help="optimize the bundled all-MiniLM-L6-v2 offline and print the report")
    demo.add_argument("--config", default=None, help="preset name (conservative, aggressive, quality) or YAML file")
    demo.add_argument("--output", default=None, help="folder to save the optimized model, tokenizer and report in")
    demo.add_argument("--json", action="store_true", help="print the full report as JSON")
    demo.set_defaults(run=_run)
