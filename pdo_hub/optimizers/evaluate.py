"""Measuring a model: output fidelity against the original, and latency / throughput."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Mapping
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inputs import Inputs, batch_size, call_model, output_tensor, to_device


@dataclasses.dataclass
class Fidelity:
    """How close a model's outputs are to the original's on the same inputs.

    `cosine` is the mean per-sample cosine similarity of what the model's users consume (`measure`):
    for a token encoder called with an `attention_mask`, its mask-pooled sentence embedding (what
    sentence-transformers computes; padded positions carry no meaning and vary freely); otherwise the
    flattened output. `top1_agreement` is the share of samples whose arg-max class matches (only for
    2-D logits).
    """

    cosine: float
    top1_agreement: float | None
    max_abs_error: float
    measure: str = "output_cosine"

    @property
    def loss(self) -> float:
        """Accuracy loss used when no task metric is given: 1 - cosine."""
        return max(0.0, 1.0 - self.cosine)


@torch.inference_mode()
def reference_outputs(model: nn.Module, inputs: list[Inputs], device: torch.device) -> list[torch.Tensor]:
    return [output_tensor(call_model(model, to_device(x, device))).float().cpu() for x in inputs]


@torch.inference_mode()
def fidelity(model: nn.Module, inputs: list[Inputs], references: list[torch.Tensor], device: torch.device) -> Fidelity:
    cosines, agree, total, max_err, measures = [], 0, 0, 0.0, set()
    for x, ref in zip(inputs, references):
        out = output_tensor(call_model(model, to_device(x, device))).float().cpu()
        mask = _token_mask(x, ref)
        if mask is None:
            a, b = out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1)
            measures.add("output_cosine")
        else:
            a, b = _mean_pool(out, mask), _mean_pool(ref, mask)
            measures.add("pooled_embedding_cosine")
        cosines.extend(F.cosine_similarity(a, b, dim=1, eps=1e-12).tolist())
        max_err = max(max_err, float((out - ref).abs().max()))
        if ref.dim() == 2:
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
    measure = measures.pop() if len(measures) == 1 else "output_cosine"
    return Fidelity(statistics.fmean(cosines), agree / total if total else None, max_err, measure)


def fidelity_measure(inputs: list[Inputs], references: list[torch.Tensor]) -> str:
    """The name of what `fidelity` compares on these inputs (the report's `metric` without `eval_fn`)."""
    pooled = [_token_mask(x, ref) is not None for x, ref in zip(inputs, references)]
    return "pooled_embedding_cosine" if pooled and all(pooled) else "output_cosine"


def _token_mask(inputs: Inputs, reference: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of a token encoder's output ([batch, tokens, hidden]), else None."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or reference.dim() != 3 or tuple(mask.shape) != tuple(reference.shape[:2]):
        return None
    return mask.detach().float().cpu()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


ROUNDS = 3  # interleaved timing rounds: enough to see the drift between them, cheap at batch 1
# Untimed calls a model gets at least before its first timed one: `dynamic` builds its frozen trace
# on the second call and TorchScript's profiling executor optimizes a trace after its first two, so
# fewer would time the build into the first round (and report it as noise).
TRACE_CALLS = 3


@dataclasses.dataclass
class Timing:
    """Latency of one model: the median of its fastest round, and how much the rounds disagreed.

    `spread` is (slowest - fastest round median) / fastest: the run-to-run noise this measurement
    saw (drift of the machine's load, thermal state, other processes).
    """

    median_latency_ms: float
    fps: float
    batch_size: int
    runs: int
    spread: float = 0.0
    rounds: int = 1


@torch.inference_mode()
def benchmark_interleaved(
    models: list[nn.Module], inputs: Inputs, device: torch.device, *, warmup: int, runs: int, threads: int, rounds: int = ROUNDS,
) -> list[Timing]:
    """Time `models` side by side: `rounds` rounds, each calling every model `runs` times.

    Timings on a shared machine drift by tens of percent within minutes, so models timed one after
    the other are compared under different loads. Here every round visits every model, in
    alternating order (forward, then backward), so a drift affects them all alike; the first round
    starts with `warmup` (at least `TRACE_CALLS`) untimed calls per model (traces built, caches
    warm), later rounds with one. A model's latency is the median of its calls in its fastest round.
    FPS is samples per second: batch size / latency.
    """
    inputs = to_device(inputs, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in models]
    with torch_threads(threads):
        for round_index in range(rounds):
            order = range(len(models)) if round_index % 2 == 0 else reversed(range(len(models)))
            for index in order:
                model = models[index]
                for _ in range(max(warmup, TRACE_CALLS) if round_index == 0 else min(1, warmup)):
                    call_model(model, inputs)
                sync()
                for _ in range(runs):
                    start = time.perf_counter()
                    call_model(model, inputs)
                    sync()
                    samples[index][round_index].append(time.perf_counter() - start)
    batch = batch_size(inputs)
    timings = []
    for per_round in samples:
        round_medians = [statistics.median(times) for times in per_round]
        # The fastest round: other processes only ever slow a round down, so the quietest one is the
        # best estimate of the model's own speed (a model hit by a burst in one round keeps its rank).
        latency = min(round_medians)
        spread = (max(round_medians) - latency) / latency if latency > 0 else 0.0
        timings.append(Timing(latency * 1000.0, batch / latency, batch, runs * rounds, spread, rounds))
    return timings


def benchmark(model: nn.Module, inputs: Inputs, device: torch.device, *, warmup: int, runs: int, threads: int) -> Timing:
    """One model timed alone (`benchmark_interleaved` with one model)."""
    return benchmark_interleaved([model], inputs, device, warmup=warmup, runs=runs, threads=threads)[0]


def timing_noise(timings: list[Timing]) -> float:
    """The relative noise of a set of interleaved timings: the median of their spreads.

    The median, not the largest: one model disturbed once should not make every comparison a tie.
    """
    spreads = [t.spread for t in timings if t is not None]
    return float(statistics.median(spreads)) if spreads else 0.0
