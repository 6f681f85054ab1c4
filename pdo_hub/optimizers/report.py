"""The optimization report: the seed's keys plus accuracy, every candidate, config and environment."""

from __future__ import annotations

import platform
from typing import Any, Mapping

import torch

from ..core import cpu
from ..core.version import __version__
from ..core.config import PostDownloadOptimizationConfig
from .evaluate import Timing
from .methods import _token_int8_kernel
from .sizing import MB

REPORT_VERSION = 1


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "pdo_hub_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_flags": cpu.reported_flags(),
        "benchmark_threads": threads,
        "device": str(device),
        "quantized_engine": torch.backends.quantized.engine,
        # What accumulated the int8 products of the measured candidates: per library, a VNNI instruction
        # set or int16 pairs (where full-range int8 saturates, so only portable variants are built).
        "int8_kernels": cpu.int8_environment(),
        # What the per-token int8 layers ran on: pdo-hub's fused kernel, or ATen ops and why (same outputs).
        "per_token_int8_kernel": _token_int8_kernel.status(),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def size_metrics(original_bytes: int, optimized_bytes: int) -> dict[str, float]:
    return {
        "original_size_mb": round(original_bytes / MB, 3),
        "optimized_size_mb": round(optimized_bytes / MB, 3),
        "size_reduction_percent": round(100.0 * (1.0 - optimized_bytes / original_bytes), 2) if original_bytes else 0.0,
        "original_size_bytes": original_bytes,
        "optimized_size_bytes": optimized_bytes,
    }


def performance_metrics(original: Timing | None, optimized: Timing | None, config: PostDownloadOptimizationConfig) -> dict[str, Any]:
    if original is None or optimized is None:
        return {"speedup": None, "original_fps": None, "optimized_fps": None, "benchmarked": False}
    return {
        "speedup": round(original.median_latency_ms / optimized.median_latency_ms, 3),
        "original_fps": round(original.fps, 2),
        "optimized_fps": round(optimized.fps, 2),
        "original_latency_ms": round(original.median_latency_ms, 3),
        "optimized_latency_ms": round(optimized.median_latency_ms, 3),
        "batch_size": original.batch_size,
        "timed_runs": optimized.runs,
        "warmup_runs": config.benchmark_warmup,
        "threads": config.benchmark_threads,
        "statistic": "median of the fastest of the interleaved rounds",
        "rounds": optimized.rounds,
        "original_latency_spread": round(original.spread, 4),
        "optimized_latency_spread": round(optimized.spread, 4),
        "benchmarked": True,
    }


def timing_section(original: Timing | None, noise: float, config: PostDownloadOptimizationConfig) -> dict[str, Any]:
    """How speed was compared: interleaved rounds, and the noise within which speedups count as equal."""
    if original is None:
        return {"benchmarked": False}
    return {
        "benchmarked": True,
        "rounds": original.rounds,
        "runs_per_round": config.benchmark_runs,
        "order": "interleaved: every round times the original and every candidate, in alternating order",
        "noise": round(noise, 4),
        "noise_statistic": "median over the timed models of (slowest - fastest round median) / fastest",
    }


def disabled_report(model_name: str, config: PostDownloadOptimizationConfig, seconds: float) -> dict[str, Any]:
    return {
        "report_version": REPORT_VERSION,
        "model_name": model_name,
        "optimization_enabled": False,
        "optimizations_applied": [],
        "model_size_metrics": {},
        "performance_metrics": {},
        "accuracy_metrics": {},
        "candidates": [],
        "notes": ["enable_optimization is false: the model was returned unchanged."],
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "optimization_time_seconds": round(seconds, 3),
    }


def report_summary(report: dict | None) -> dict[str, Any]:
    """The figures a summary table shows: methods applied, size before -> after (MB), speedup, accuracy loss.

    Values are None where the report (or a section of it) is missing.
    """
    size, perf, acc = ((report or {}).get(k) or {} for k in ("model_size_metrics", "performance_metrics", "accuracy_metrics"))
    return {"methods": (report or {}).get("optimizations_applied"), "size_before_mb": size.get("original_size_mb"),
            "size_after_mb": size.get("optimized_size_mb"), "speedup": perf.get("speedup"),
            "accuracy_loss": acc.get("accuracy_loss")}


CANDIDATE_COLUMNS = ("methods", "status", "size (MB)", "size ratio", "speedup", "accuracy loss", "score", "reason")


def candidate_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """One row per candidate under `CANDIDATE_COLUMNS`: the table the model card and the CLI both show."""
    return [
        ["+".join(c.get("methods", [])), c.get("status"), c.get("size_mb"), c.get("size_ratio"), c.get("speedup"),
         c.get("accuracy_loss"), c.get("score"), c.get("reason", "")]
        for c in report.get("candidates") or []
    ]


def example_benchmark(report: Mapping[str, Any]) -> list[str]:
    """The seed's "Example Benchmark" block, filled in from the report (lines, no fence)."""
    size, perf, acc = (report.get(k) or {} for k in ("model_size_metrics", "performance_metrics", "accuracy_metrics"))
    if not size:
        return []

    def fps(key: str) -> str:
        return f", {perf[key]:.1f} FPS" if perf.get(key) else ""

    lines = [
        f"Model: {report.get('model_name', 'model')}",
        f"Original: {size['original_size_mb']:.1f} MB{fps('original_fps')}",
        f"Optimized: {size['optimized_size_mb']:.1f} MB{fps('optimized_fps')}",
    ]
    results = [f"{size['size_reduction_percent']:.0f}% size reduction"]
    if perf.get("speedup"):
        results.append(f"{perf['speedup']:.1f}x speedup")
    if acc.get("accuracy_loss") is not None:
        results.append(f"{100 * acc['accuracy_loss']:.1f}% accuracy loss")
    return lines + ["Results: " + ", ".join(results)]
