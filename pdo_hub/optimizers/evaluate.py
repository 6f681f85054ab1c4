"""Measuring a model: output fidelity against the original, and latency / throughput."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inputs import Inputs, batch_size, call_model, output_tensor, to_device


@dataclasses.dataclass
class Fidelity:
    """How close a model's outputs are to the original's on the same inputs.

    `cosine` is the mean per-sample cosine similarity of the flattened outputs; `top1_agreement` is
    the share of samples whose arg-max class matches (only for 2-D logits).
    """

    cosine: float
    top1_agreement: float | None
    max_abs_error: float

    @property
    def loss(self) -> float:
        """Accuracy loss used when no task metric is given: 1 - cosine."""
        return max(0.0, 1.0 - self.cosine)


@torch.inference_mode()
def reference_outputs(model: nn.Module, inputs: list[Inputs], device: torch.device) -> list[torch.Tensor]:
    return [output_tensor(call_model(model, to_device(x, device))).float().cpu() for x in inputs]


@torch.inference_mode()
def fidelity(model: nn.Module, inputs: list[Inputs], references: list[torch.Tensor], device: torch.device) -> Fidelity:
    cosines, agree, total, max_err = [], 0, 0, 0.0
    for x, ref in zip(inputs, references):
        out = output_tensor(call_model(model, to_device(x, device))).float().cpu()
        a, b = out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1)
        cosines.extend(F.cosine_similarity(a, b, dim=1, eps=1e-12).tolist())
        max_err = max(max_err, float((out - ref).abs().max()))
        if ref.dim() == 2:
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
    return Fidelity(statistics.fmean(cosines), agree / total if total else None, max_err)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclasses.dataclass
class Timing:
    median_latency_ms: float
    fps: float
    batch_size: int
    runs: int


@torch.inference_mode()
def benchmark(model: nn.Module, inputs: Inputs, device: torch.device, *, warmup: int, runs: int, threads: int) -> Timing:
    """Median latency of `runs` timed forward passes after `warmup` untimed ones, at `threads` threads.

    FPS is samples per second: batch size / median latency.
    """
    inputs = to_device(inputs, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch_threads(threads):
        for _ in range(warmup):
            call_model(model, inputs)
        sync()
        for _ in range(runs):
            start = time.perf_counter()
            call_model(model, inputs)
            sync()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    batch = batch_size(inputs)
    return Timing(median * 1000.0, batch / median, batch, runs)
