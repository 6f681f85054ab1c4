"""The report's Pareto chart: every candidate's size against its speed, accuracy loss as colour.

People compare variants at a glance on a chart better than in a table: the winner, the candidates
over the accuracy budget and the ones that were beaten all show where they stand against the
original (size ratio 1, speedup 1). The line joins the Pareto-optimal candidates within the budget
(none is both smaller and faster).

matplotlib is imported only when a chart is drawn, rendering with Agg (no display, no pyplot). The PNG
carries no software/date metadata, so the same report gives the same bytes (matplotlib's Agg
rendering is deterministic for the same version and fonts).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

CHART_NAME = "pareto.png"


def _points(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report.get("candidates") or [] if c.get("size_ratio") is not None and c.get("speedup") is not None]


def has_chart(report: Mapping[str, Any]) -> bool:
    """Whether the report has anything to draw (a candidate with both size and speed measured)."""
    return bool(_points(report))


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates within the budget that no other such candidate beats on both size and speed, by size."""
    ok = [p for p in points if p.get("status") in ("accepted", "selected")]
    front = [p for p in ok if not any(
        q is not p and q["size_ratio"] <= p["size_ratio"] and q["speedup"] >= p["speedup"]
        and (q["size_ratio"] < p["size_ratio"] or q["speedup"] > p["speedup"]) for q in ok)]
    return sorted(front, key=lambda p: p["size_ratio"])


def pareto_png(report: Mapping[str, Any]) -> bytes | None:
    """The chart as PNG bytes, or None when nothing was timed (benchmarking off, or no candidate measured)."""
    points = _points(report)
    if not points:
        return None
    try:
        # A bare Figure renders with Agg without pyplot: no global backend is chosen or changed.
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("The report's Pareto chart needs matplotlib: pip install matplotlib (a pdo-hub dependency).") from err
    threshold = float((report.get("accuracy_metrics") or {}).get("preserve_accuracy_threshold") or 0.02)
    figure = Figure(figsize=(7.0, 4.8), dpi=100)
    axes = figure.add_subplot()
    losses = [min(float(p.get("accuracy_loss") or 0.0), 2 * threshold) for p in points]
    shapes = {"selected": ("*", 320), "accepted": ("o", 90), "rejected": ("X", 90)}
    mappable = None
    for status, (marker, size) in shapes.items():
        chosen = [(p, loss) for p, loss in zip(points, losses) if p.get("status") == status]
        if chosen:
            mappable = axes.scatter(
                [p["size_ratio"] for p, _ in chosen], [p["speedup"] for p, _ in chosen], c=[loss for _, loss in chosen],
                cmap="viridis_r", vmin=0.0, vmax=2 * threshold, marker=marker, s=size, edgecolors="black", linewidths=0.6,
                label={"selected": "chosen", "accepted": "within budget", "rejected": "rejected"}[status], zorder=3,
            )
    axes.scatter([1.0], [1.0], marker="s", s=70, color="white", edgecolors="black", label="original", zorder=3)
    front = pareto_front(points)
    if len(front) > 1:
        axes.plot([p["size_ratio"] for p in front], [p["speedup"] for p in front], color="grey", linestyle="--", zorder=2, label="Pareto front")
    for point in points:
        axes.annotate("+".join(point["methods"]), (point["size_ratio"], point["speedup"]), textcoords="offset points",
                      xytext=(6, 4), fontsize=8)
    if mappable is not None:
        bar = figure.colorbar(mappable, ax=axes)
        bar.set_label(f"accuracy loss (budget {threshold:g}, red line)")
        bar.ax.axhline(threshold, color="red", linewidth=1.5)
    axes.set_xlabel("size / original size (smaller is better)")
    axes.set_ylabel("speedup vs original (higher is better)")
    axes.set_xlim(0.0, max(1.1, max(p["size_ratio"] for p in points) + 0.05))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    axes.set_title(f"{report.get('model_name', 'model')}: size vs speed of every candidate", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    # No Software/date chunks: the bytes depend on the report only.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def write_pareto(report: Mapping[str, Any], directory: str | Path) -> str | None:
    """Write `pareto.png` into `directory`; returns its name, or None when there is nothing to draw.

    The chart only illustrates the report: without matplotlib it is skipped with a warning, and the
    weights, recipe and report are written all the same.
    """
    try:
        data = pareto_png(report)
    except ImportError as err:
        logger.warning("%s", err)
        return None
    if data is None:
        return None
    (Path(directory) / CHART_NAME).write_bytes(data)
    return CHART_NAME
