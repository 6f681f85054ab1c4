"""Side-by-side measurements of two runtimes of one variant: output cosine and interleaved latency."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch

Run = Callable[[Any], torch.Tensor]


def cosine(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float:
    """Mean cosine of flattened per-sample outputs (the lowest one is what a report should worry about)."""
    values = [torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item()
              for a, b in zip(reference, other)]
    return float(sum(values) / len(values))


def real_tokens(output: torch.Tensor, inputs: Any) -> torch.Tensor:
    """The output rows of real tokens: padding positions carry no meaning (every pooling masks them out)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None or output.dim() != 3 or output.shape[:2] != mask.shape:
        return output
    return output[mask.bool()]


def interleaved_latency_ms(runs: dict[str, Run], example: Any, rounds: int = 7, calls: int = 3) -> dict[str, float]:
    """Median ms per call of each runtime, timed in interleaved rounds so machine drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(example)  # warm-up: lazy init, first-shape traces
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                for _ in range(calls):
                    run(example)
                times[name].append((time.perf_counter() - start) * 1000 / calls)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the libraries a measurement depends on (recorded beside the numbers)."""
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in names}
