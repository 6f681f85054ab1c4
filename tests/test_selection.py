"""Auto-selection: the fitting int8 flavour, interleaved timing, speed ties within the noise, reproducibility."""

from __future__ import annotations

import hashlib
import statistics

import pytest
import torch
import torch.nn as nn

import pdo_hub
from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers import optimize_downloaded_model
from pdo_hub.optimizers.candidates import Candidate
from pdo_hub.optimizers.evaluate import benchmark_interleaved, timing_noise
from pdo_hub.optimizers.flavours import Fit, fitting_quantization
from pdo_hub.optimizers.selection import candidate_pipelines, rank_key, select, tied_speedups
from tiny_models import build, example

FAST = {"benchmark_runs": 3, "benchmark_warmup": 1, "calibration_samples": 4}


def _candidate(name: str, size: int, speedup: float | None, loss: float) -> Candidate:
    return Candidate((name,), size_bytes=size, speedup=speedup, accuracy_loss=loss, status="accepted")


def test_speedups_within_the_noise_are_one_speed():
    tied = tied_speedups([3.0, 2.9, 1.5, 1.48], noise=0.05)
    assert tied[0] == tied[1] == pytest.approx(2.95)
    assert tied[2] == tied[3] == pytest.approx(1.49)
    assert tied_speedups([3.0, 2.9], noise=0.0) == [3.0, 2.9], "without noise every measured difference counts"


def test_a_speed_tie_goes_to_the_smaller_candidate():
    config = PostDownloadOptimizationConfig()
    # Measured 3.3x against 3.0x: at zero noise the faster one wins on score ...
    faster, smaller = _candidate("faster", 250, 3.3, 0.001), _candidate("smaller", 240, 3.0, 0.001)
    assert select([faster, smaller], 1000, config, noise=0.0, notes=[]) is faster
    # ... but when the rounds disagree by 15%, 3.3x and 3.0x are the same speed and size decides.
    faster, smaller = _candidate("faster", 250, 3.3, 0.001), _candidate("smaller", 240, 3.0, 0.001)
    notes: list[str] = []
    assert select([faster, smaller], 1000, config, noise=0.15, notes=notes) is smaller
    assert smaller.status == "selected" and faster.status == "accepted"
    assert any("within the timing noise" in note for note in notes), notes


def test_exact_ties_go_to_the_smaller_then_the_more_accurate():
    assert max([(0.5, 300, 0.001), (0.5, 200, 0.002), (0.5, 200, 0.001)], key=lambda c: rank_key(*c)) == (0.5, 200, 0.001)


def test_a_candidate_within_noise_of_the_original_speed_is_judged_on_size():
    # 0.97x measured with 10% noise is "as fast as the original": a 2% smaller model still gains.
    candidate = _candidate("svd", 980, 0.97, 0.0)
    assert select([candidate], 1000, PostDownloadOptimizationConfig(), noise=0.10, notes=[]) is candidate
    slower = _candidate("svd", 980, 0.97, 0.0)
    assert select([slower], 1000, PostDownloadOptimizationConfig(), noise=0.0, notes=[]) is None
    assert "no net gain" in slower.reason


def test_the_fitting_flavour_is_static_for_a_cnn_and_dynamic_for_linear_and_lstm_models():
    assert fitting_quantization(build("KitchenSink"), example("KitchenSink")).method == "static"
    assert fitting_quantization(build("MLP"), example("MLP")).method == "dynamic"
    assert fitting_quantization(build("Recurrent"), example("Recurrent")).method == "dynamic"


def test_the_fitting_flavour_is_tried_beside_the_configured_one_and_the_report_says_why():
    notes: list[str] = []
    config = PostDownloadOptimizationConfig(quantization_method="dynamic", low_rank_method="svd")
    pipelines = candidate_pipelines(config, notes, Fit("static", 0.99))
    assert set(pipelines) == {("svd",), ("dynamic",), ("static",), ("svd", "dynamic"), ("svd", "static")}
    assert any("'static' is tried as well" in note and "convolutions" in note for note in notes), notes
    # The configured flavour already fits: nothing added.
    assert set(candidate_pipelines(config, [], Fit("dynamic", 0.0))) == {("svd",), ("dynamic",), ("svd", "dynamic")}
    # fx / qat are static flavours: on a CNN they are the fitting kind already.
    quality = candidate_pipelines(PostDownloadOptimizationConfig.from_preset("quality"), notes := [], Fit("static", 0.99))
    assert not any("static" in p for p in quality) and not notes


def test_without_auto_selection_the_fitting_twin_follows_each_configured_pipeline_and_quantizing_fallbacks_come_first():
    config = PostDownloadOptimizationConfig.from_preset("aggressive")  # static + hlrtf + prune, no auto-selection
    pipelines = candidate_pipelines(config, [], Fit("dynamic", 0.0))
    assert pipelines == [
        ("prune", "hlrtf", "static"), ("prune", "hlrtf", "dynamic"), ("prune", "static"), ("prune", "dynamic"),
        ("hlrtf", "static"), ("hlrtf", "dynamic"), ("static",), ("dynamic",),
        # Float-only fall-backs last: a float `prune` is barely smaller than the original.
        ("prune", "hlrtf"), ("prune",), ("hlrtf",),
    ]


class _Recorder(nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x + 1


def test_timing_interleaves_the_models_in_alternating_order():
    log: list[str] = []
    models = [_Recorder("a", log), _Recorder("b", log)]
    timings = benchmark_interleaved(models, torch.zeros(1), torch.device("cpu"), warmup=1, runs=2, threads=1, rounds=3)
    # Round 1 forward (a then b), round 2 backward (b then a), round 3 forward: a drift hits both alike.
    visits = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert visits == ["a", "b", "a", "b"], log
    assert all(t.rounds == 3 and t.runs == 6 and t.spread >= 0 for t in timings)
    assert timing_noise(timings) == pytest.approx(statistics.median(t.spread for t in timings))


def test_the_report_records_the_timing_noise():
    _, report = optimize_downloaded_model(build("KitchenSink"), "k", example_inputs=example("KitchenSink"),
                                          config={**FAST, "enable_low_rank_optimization": False})
    timing = report["selection"]["timing"]
    assert timing["rounds"] == 3 and timing["runs_per_round"] == 3 and timing["noise"] >= 0
    assert report["performance_metrics"]["rounds"] == 3
    assert all("latency_spread" in c for c in report["candidates"] if "speedup" in c)


def test_three_runs_of_the_same_optimization_store_identical_bytes(tmp_path):
    # Recovery (distillation) and static calibration included: both must be step-bounded and seeded.
    # The pipeline is configured (auto-selection off) because auto-selection weighs measured speed: two
    # candidates whose speeds sit at the edge of the timing noise may rank either way on a busy machine
    # (a CI run chose static once and svd+static once), and that is not what this test is about.
    # pareto.png is left out on purpose: it draws the measured speedups, which differ run to run.
    config = {**FAST, "benchmark_runs": 5, "recovery_steps": 10, "recovery_max_seconds": 600, "target_compression_ratio": 0.6,
              "preserve_accuracy_threshold": 0.01, "auto_select_best_method": False, "quantization_method": "static"}
    chosen, digests = [], []
    for run in range(3):
        optimized, report = optimize_downloaded_model(build("KitchenSink"), "k", example_inputs=example("KitchenSink"), config=config)
        pdo_hub.save_optimized(optimized, tmp_path / str(run))
        chosen.append(report["selection"]["selected"])
        digests.append(hashlib.sha256((tmp_path / str(run) / "model.safetensors").read_bytes()).hexdigest())
        assert any("recovery by distillation" in note for note in report["notes"]), report["notes"]
    assert chosen == [["svd", "static"]] * 3, chosen
    assert digests[0] == digests[1] == digests[2], f"the same inputs and config stored different bytes ({chosen[0]})"
