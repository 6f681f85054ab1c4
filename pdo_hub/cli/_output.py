"""Tables and report summaries shared by the commands (plain text, aligned columns)."""

from __future__ import annotations

import sys
from collections.abc import Sequence



def table(headers: Sequence[str], rows: Sequence[Sequence[object]], file=None) -> None:
    """Print `rows` under `headers` with aligned columns."""
    file = file or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip(), file=file)
        if index == 0:
            print("  ".join("-" * width for width in widths), file=file)


def print_report(report: dict) -> None:
    """The optimization report as people read it: what was applied, size, speed, accuracy, candidates."""
    # A report of a disabled optimization (or one that kept the original early) has empty metric sections.
    size = report.get("model_size_metrics") or {}
    perf = report.get("performance_metrics") or {}
    acc = report.get("accuracy_metrics") or {}
    print(f"Model: {report['model_name']}")
    if report.get("optimization_enabled") is False:
        # Only here are the notes short and the whole story; an enabled run's notes are in --json.
        for note in report.get("notes") or ["enable_optimization is false: the model was returned unchanged."]:
            print(f"Optimization disabled: {note}")
    print(f"Applied optimizations: {report['optimizations_applied'] or 'none (original kept)'}")
    if "optimized_size_mb" in size:
        print(f"Size: {size['original_size_mb']:.1f} MB -> {size['optimized_size_mb']:.1f} MB ({size['size_reduction_percent']:.1f}% smaller)")
    if perf.get("speedup"):
        print(f"Speed: {perf['original_fps']:.1f} -> {perf['optimized_fps']:.1f} inferences/s ({perf['speedup']:.2f}x, batch {perf['batch_size']}, {perf['threads']} threads)")
    if acc.get("accuracy_loss") is not None:
        print(f"Accuracy loss ({acc.get('metric')}): {acc['accuracy_loss']:.4f} (budget {acc.get('preserve_accuracy_threshold')})")
    if "sentence_embedding_cosine" in acc:
        print(f"Sentence-embedding cosine vs FP32: {acc['sentence_embedding_cosine']:.4f}")
    from pdo_hub.optimizers.report import CANDIDATE_COLUMNS, candidate_rows  # torch: only when printing a report

    rows = candidate_rows(report)
    if rows:
        print("Candidates:")  # the model card's table
        table(CANDIDATE_COLUMNS, rows)
    noise = ((report.get("selection") or {}).get("timing") or {}).get("noise")
    if noise is not None:
        print(f"Timing noise: {100 * noise:.1f}% (speedups closer than this count as equal)")
    print(f"Optimization time: {report['optimization_time_seconds']:.1f} s")
    if "saved_to" in report:
        print(f"Saved to: {report['saved_to']}")
