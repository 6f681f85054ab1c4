"""The optimization report: the seed's keys plus accuracy, every candidate, config and environment."""

from __future__ import annotations

import functools
import platform
from typing import Any

import torch

from ..core.version import __version__
from ..core.config import PostDownloadOptimizationConfig
from .evaluate import Timing
from .sizing import MB

REPORT_VERSION = 1


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> list[str]:
    interesting = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx_vnni", "fma")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in interesting if flag in present]
    except OSError:
        pass
    return []


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "pdo_hub_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_flags": _cpu_flags(),
        "benchmark_threads": threads,
        "device": str(device),
        "quantized_engine": torch.backends.quantized.engine,
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
        "timed_runs": config.benchmark_runs,
        "warmup_runs": config.benchmark_warmup,
        "threads": config.benchmark_threads,
        "statistic": "median",
        "benchmarked": True,
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
