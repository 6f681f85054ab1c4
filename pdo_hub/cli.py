"""The `pdo-hub` command: the only place that prints for humans."""

from __future__ import annotations

import argparse
import json
import sys

from .core.errors import PdoHubError


def _print_report(report: dict) -> None:
    size, perf, acc = report["model_size_metrics"], report["performance_metrics"], report["accuracy_metrics"]
    print(f"Model: {report['model_name']}")
    print(f"Applied optimizations: {report['optimizations_applied'] or 'none (original kept)'}")
    print(f"Size: {size['original_size_mb']:.1f} MB -> {size['optimized_size_mb']:.1f} MB ({size['size_reduction_percent']:.1f}% smaller)")
    if perf.get("speedup"):
        print(f"Speed: {perf['original_fps']:.1f} -> {perf['optimized_fps']:.1f} inferences/s ({perf['speedup']:.2f}x, batch {perf['batch_size']}, {perf['threads']} threads)")
    print(f"Accuracy loss ({acc['metric']}): {acc['accuracy_loss']:.4f} (budget {acc['preserve_accuracy_threshold']})")
    if "sentence_embedding_cosine" in acc:
        print(f"Sentence-embedding cosine vs FP32: {acc['sentence_embedding_cosine']:.4f}")
    print("Candidates:")
    for c in report["candidates"]:
        detail = f"score {c['score']:.3f}" if "score" in c else ""
        print(f"  {'+'.join(c['methods']):<20} {c['status']:<9} {detail} {c.get('reason', '')}")
    print(f"Optimization time: {report['optimization_time_seconds']:.1f} s")
    if "saved_to" in report:
        print(f"Saved to: {report['saved_to']}")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.config, args.output)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdo-hub", description="Hugging Face Hub model mirror with post-download optimization.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="optimize the bundled all-MiniLM-L6-v2 offline and print the report")
    demo.add_argument("--config", default=None, help="preset name (conservative, aggressive, quality) or YAML file")
    demo.add_argument("--output", default=None, help="folder to save the optimized model, tokenizer and report in")
    demo.add_argument("--json", action="store_true", help="print the full report as JSON")
    demo.set_defaults(run=_demo)
    return parser


def _quiet_third_party() -> None:
    """Keep the terminal for pdo-hub's own output: torchao's import-time notices and transformers' bars."""
    import logging
    import os

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    try:
        return args.run(args)
    except PdoHubError as err:
        print(f"pdo-hub: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
