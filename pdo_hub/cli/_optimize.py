"""`pdo-hub optimize SOURCE`: one model through the optimized cache, with a summary table."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pdo_hub.cli._output import print_report, table
from pdo_hub.cli._progress import progress


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """`--config` / `--preset` (one optimization config), shared by the commands that optimize."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", default=None, help="optimization config: a YAML file or a preset name")
    group.add_argument("--preset", default=None, choices=("conservative", "aggressive", "quality"), help="a built-in preset")


def config_of(args: argparse.Namespace):
    """The config the options name (None: the seed's defaults)."""
    return args.preset or args.config


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """SOURCE and how to build and calibrate it, shared by `optimize` and `push`."""
    parser.add_argument("source", help="hf:org/name[@revision], torchvision:name[:weights], or a local file/folder")
    add_config_options(parser)
    parser.add_argument("--calibration", default=None,
                        help="your inputs: a text file (one example per line) for text models, a folder of images for vision models")
    parser.add_argument("--auto-class", default="AutoModel", help="transformers Auto class for Hub repos (default AutoModel)")
    parser.add_argument("--architecture", default=None, help="torchvision model name for a local state-dict file")


def optimized_source(args: argparse.Namespace, *, offline: bool = False):
    """(spec, model): the source the options name, through the optimized cache, with progress lines."""
    from pdo_hub.sources import optimize_source, parse_source

    spec = parse_source(args.source)
    with progress(not args.json and not args.quiet):
        model = optimize_source(spec, config=config_of(args), calibration=args.calibration, auto_class=args.auto_class,
                                architecture=args.architecture, local_files_only=offline)
    return spec, model


def _run(args: argparse.Namespace) -> int:
    spec, model = optimized_source(args, offline=args.offline)
    entry = Path(model.pdo_cache_path)
    report = model.pdo_report
    if args.out:
        _copy_entry(entry, Path(args.out))
    if args.json:
        print(json.dumps({"source": str(spec), "cache_status": model.pdo_cache_status, "entry": str(entry),
                          "out": args.out, "report": report}, indent=2, default=str))
        return 0
    print(f"{spec}: {'cache hit' if model.pdo_cache_status == 'hit' else 'optimized and cached'} ({entry})")
    print_summary([summary_row(str(spec), model.pdo_cache_status, report)])
    if args.verbose:
        print()
        print_report(report)
    if args.out:
        print(f"Copied to {args.out}")
    return 0


def summary_row(source: str, status: str, report: dict | None, error: str = "") -> dict:
    """One row of the summary tables (optimize and mirror), as JSON-able values."""
    from pdo_hub.optimizers.report import report_summary

    return {"source": source, "status": status, **report_summary(report), "error": error}


def print_summary(rows: list[dict]) -> None:
    """The summary table: source, status, what was applied, size before -> after, speedup, loss."""
    def number(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else ""

    table(("source", "status", "applied", "size MB", "speedup", "loss", "error"), [
        (r["source"], r["status"], "+".join(r["methods"] or []) or ("original kept" if r["size_before_mb"] else ""),
         f"{number(r['size_before_mb'], '.1f')} -> {number(r['size_after_mb'], '.1f')}" if r["size_before_mb"] else "",
         number(r["speedup"], ".2f") + ("x" if r["speedup"] else ""), number(r["accuracy_loss"], ".4f"), r["error"])
        for r in rows])


def _copy_entry(entry: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(entry.rglob("*")):
        relative = path.relative_to(entry)
        if path.is_file() and relative.name not in ("pdo_manifest.json", ".pdo_access"):
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / relative)


def register(commands) -> None:
    parser = commands.add_parser("optimize", help="fetch and optimize one model through the optimized cache",
                                 description="SOURCE: hf:org/name[@revision], torchvision:name[:weights], or a local file/folder.")
    add_source_options(parser)
    parser.add_argument("--out", default=None, help="also copy the optimized model, recipe, report and card into this folder")
    parser.add_argument("--offline", action="store_true", help="no network: the optimized cache only")
    parser.add_argument("--json", action="store_true", help="print the result and full report as JSON")
    parser.add_argument("--verbose", "-v", action="store_true", help="also print the full report (every candidate)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.set_defaults(run=_run)
