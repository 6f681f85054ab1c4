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


#: What the optimizer judges a candidate by when no `eval_fn` is given, by what the model outputs.
TASK_METRICS = {
    "classifier_disagreement": "expected top-1 disagreement with the original on held-out inputs: the mean total "
                               "variation between their softmax outputs (0 = same distributions, 1 = disjoint)",
    "next_token_disagreement": "expected next-token disagreement with the original: the mean total variation between "
                               "their softmax outputs over every real token position",
    "pooled_embedding_cosine": "1 - cosine similarity of mask-pooled sentence embeddings",
    "output_cosine": "1 - cosine similarity of the flattened outputs",
}
# An estimate is reported as uncertain when twice its standard error (over the held-out samples) is above
# this: half a point of accuracy, the resolution at which users compare variants.
UNCERTAIN_ABOVE = 0.005


@dataclasses.dataclass
class Fidelity:
    """How close a model's outputs are to the original's on the same inputs.

    `cosine` is the mean per-sample cosine similarity of what the model's users consume: for a token
    encoder called with an `attention_mask`, its mask-pooled sentence embedding (what sentence-transformers
    computes; padded positions carry no meaning and vary freely); otherwise the flattened output.
    For logits (2-D outputs, or a language model's `logits`) `disagreement` is the mean total variation
    between the softmax outputs, a smooth estimate of the share of top-1 predictions that change (a
    handful of held-out samples cannot resolve a fraction of a point by counting flips), `kl` the mean
    KL(original || model), and `top1_agreement` the share of arg-max predictions that match.
    `measure` names the task metric (`TASK_METRICS`); `samples` holds its per-sample losses.
    """

    cosine: float
    top1_agreement: float | None
    max_abs_error: float
    measure: str = "output_cosine"
    disagreement: float | None = None
    kl: float | None = None
    relative_error: float | None = None
    samples: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def loss(self) -> float:
        """1 - cosine: what the methods steer by internally (their budgets are calibrated on it)."""
        return max(0.0, 1.0 - self.cosine)

    @property
    def task_loss(self) -> float:
        """The accuracy loss the optimizer judges candidates by without `eval_fn` (the report's metric)."""
        return self.disagreement if self.disagreement is not None else self.loss

    @property
    def standard_error(self) -> float:
        """Standard error of `task_loss` over the held-out samples (0 with fewer than two)."""
        if len(self.samples) < 2:
            return 0.0
        return statistics.stdev(self.samples) / len(self.samples) ** 0.5

    @property
    def uncertain(self) -> bool:
        """Whether the estimate could be off by more than half a point (`UNCERTAIN_ABOVE`)."""
        return len(self.samples) < 2 or 2.0 * self.standard_error > UNCERTAIN_ABOVE


@torch.inference_mode()
def reference_outputs(model: nn.Module, inputs: list[Inputs], device: torch.device) -> list[torch.Tensor]:
    return [output_tensor(call_model(model, to_device(x, device))).float().cpu() for x in inputs]


def outputs_logits(model: nn.Module, example: Inputs, device: torch.device) -> bool:
    """Whether the model's output is class logits: a `logits` field, or a plain 2-D tensor."""
    with torch.inference_mode():
        output = call_model(model, to_device(example, device))
    if isinstance(output, torch.Tensor):
        return output.dim() == 2 and output.shape[1] > 1
    value = output.get("logits") if hasattr(output, "get") else getattr(output, "logits", None)
    return isinstance(value, torch.Tensor)


@torch.inference_mode()
def fidelity(model: nn.Module, inputs: list[Inputs], references: list[torch.Tensor], device: torch.device,
             logits: bool | None = None) -> Fidelity:
    """Compare `model` with the original's `references` on `inputs`.

    Args:
        logits: whether the outputs are logits (`outputs_logits`); None: 2-D outputs are.
    """
    cosines, agree, total, max_err, measures = [], 0, 0, 0.0, set()
    tv_samples, kls, rel = [], [], []
    for x, ref in zip(inputs, references):
        out = output_tensor(call_model(model, to_device(x, device))).float().cpu()
        mask = token_mask(x, ref)
        is_logits = (ref.dim() == 2 and ref.shape[1] > 1) if logits is None else (logits and ref.dim() in (2, 3))
        a, b = sample_vectors(out, mask), sample_vectors(ref, mask)
        cosines.extend(F.cosine_similarity(a, b, dim=1, eps=1e-12).tolist())
        rel.extend(((a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-12)).tolist())
        max_err = max(max_err, float((out - ref).abs().max()))
        if is_logits:
            tv, kl = _distribution_gaps(out, ref, mask if ref.dim() == 3 else None)
            tv_samples.extend(tv.tolist())
            kls.extend(kl.tolist())
            measures.add("classifier_disagreement" if ref.dim() == 2 else "next_token_disagreement")
        else:
            measures.add("output_cosine" if mask is None else "pooled_embedding_cosine")
        if ref.dim() == 2:
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
    measure = measures.pop() if len(measures) == 1 else "output_cosine"
    result = Fidelity(statistics.fmean(cosines), agree / total if total else None, max_err, measure,
                      relative_error=statistics.fmean(rel))
    if measure.endswith("_disagreement"):
        result.disagreement, result.kl, result.samples = statistics.fmean(tv_samples), statistics.fmean(kls), tv_samples
    else:
        result.samples = [1.0 - c for c in cosines]
    return result


def _distribution_gaps(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: total variation and KL(ref || out) of the softmax outputs (token positions averaged under `mask`)."""
    log_p, log_q = ref.log_softmax(-1), out.log_softmax(-1)
    tv = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)
    if tv.dim() == 2:  # [batch, tokens]
        weights = mask if mask is not None else torch.ones_like(tv)
        tv, kl = ((t * weights).sum(1) / weights.sum(1).clamp(min=1.0) for t in (tv, kl))
    return tv, kl


def fidelity_measure(inputs: list[Inputs], references: list[torch.Tensor], logits: bool | None = None) -> str:
    """The name of what `fidelity` judges by on these inputs (the report's `metric` without `eval_fn`)."""
    if references and all((r.dim() == 2 and r.shape[1] > 1) if logits is None else (logits and r.dim() in (2, 3)) for r in references):
        return "classifier_disagreement" if references[0].dim() == 2 else "next_token_disagreement"
    pooled = [token_mask(x, ref) is not None for x, ref in zip(inputs, references)]
    return "pooled_embedding_cosine" if pooled and all(pooled) else "output_cosine"


def token_mask(inputs: Inputs, reference: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of a token encoder's output ([batch, tokens, hidden]), else None."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or reference.dim() != 3 or tuple(mask.shape) != tuple(reference.shape[:2]):
        return None
    return mask.detach().float().cpu()


def sample_vectors(output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[samples, features]: what `fidelity` compares per sample: a token encoder's output mask-pooled
    under `mask` (`token_mask`), any other output flattened."""
    return output.reshape(output.shape[0], -1) if mask is None else _mean_pool(output, mask)


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
