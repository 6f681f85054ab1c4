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


# Seconds before each timed block: a runtime keeps its idle worker threads spinning for a while after a call
# (ONNX Runtime's for up to ~50 ms here, libgomp's for a few ms), taking the cores from whatever runs next.
SETTLE_SECONDS = 0.1


def interleaved_latency_ms(runs: dict[str, Run], example: Any, rounds: int = 7, calls: int = 3) -> dict[str, float]:
    """Median ms per call of each runtime, timed in interleaved rounds so machine drift hits all alike.

    Each block starts after a pause and one untimed call, so it times the runtime alone and awake: right
    after ONNX Runtime's calls, pdo-hub's int8 ResNet-18 ran 1.7-2.1 ms a call at batch 1 against 0.93-0.97
    right after its own (2 threads on 2 cores, 2026-12-02), and after any pause every runtime's first call
    pays for waking its threads.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(example)  # warm-up: lazy init, first-shape traces
        for _ in range(rounds):
            for name, run in runs.items():
                time.sleep(SETTLE_SECONDS)
                run(example)
                start = time.perf_counter()
                for _ in range(calls):
                    run(example)
                times[name].append((time.perf_counter() - start) * 1000 / calls)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the libraries a measurement depends on (recorded beside the numbers)."""
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in names}
