"""The report people read: the Pareto chart, the card's Example Benchmark, the same candidates table in card and CLI."""

from __future__ import annotations

import hashlib

import torch

import pdo_hub
from pdo_hub.cli._output import print_report
from pdo_hub.hub.card import build_card
from pdo_hub.hub.flow import write_entry
from pdo_hub.optimizers import optimize_downloaded_model
from pdo_hub.optimizers.chart import CHART_NAME, pareto_front, pareto_png
from pdo_hub.optimizers.report import candidate_rows
from tiny_models import build, example

FAST = {"benchmark_runs": 3, "benchmark_warmup": 1, "calibration_samples": 4, "preserve_accuracy_threshold": 0.5}
SOURCE = {"kind": "local", "source_id": "tiny", "revision": "0" * 64, "config_hash": "abc", "loader": {}}
REPORT = {
    "model_name": "resnet18",
    "optimizations_applied": ["quantization_static"],
    "model_size_metrics": {"original_size_mb": 44.7, "optimized_size_mb": 11.2, "size_reduction_percent": 74.9},
    "performance_metrics": {"speedup": 2.83, "original_fps": 45.2, "optimized_fps": 127.8, "batch_size": 1, "threads": 2, "benchmarked": True},
    "accuracy_metrics": {"preserve_accuracy_threshold": 0.02, "accuracy_loss": 0.008},
    "selection": {"timing": {"rounds": 3, "noise": 0.04}},
    "candidates": [
        {"methods": ["svd"], "status": "accepted", "size_mb": 31.3, "size_ratio": 0.7, "speedup": 1.1, "accuracy_loss": 0.004, "score": 0.3},
        {"methods": ["static"], "status": "selected", "size_mb": 11.2, "size_ratio": 0.25, "speedup": 2.83, "accuracy_loss": 0.008, "score": 0.7},
        {"methods": ["prune", "static"], "status": "accepted", "size_mb": 8.9, "size_ratio": 0.2, "speedup": 2.5, "accuracy_loss": 0.012, "score": 0.6},
        {"methods": ["svd", "static"], "status": "rejected", "size_mb": 7.9, "size_ratio": 0.18, "speedup": 2.9,
         "accuracy_loss": 0.03, "score": 0.5, "reason": "accuracy loss 0.0300 exceeds preserve_accuracy_threshold 0.0200"},
    ],
}


def test_pareto_chart_is_a_png_the_same_report_always_draws_the_same():
    first, second = pareto_png(REPORT), pareto_png(REPORT)
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and first == second
    assert b"Software" not in first, "no software/date metadata: the bytes depend on the report only"
    # svd is beaten on both axes; the rejected candidate is not on the front, however small and fast.
    assert [p["methods"] for p in pareto_front(REPORT["candidates"])] == [["prune", "static"], ["static"]]
    assert pareto_png({**REPORT, "candidates": [{k: v for k, v in c.items() if k != "speedup"} for c in REPORT["candidates"]]}) is None


def test_card_shows_the_example_benchmark_the_chart_and_the_candidates_table():
    card = build_card(REPORT, SOURCE).content
    assert "## Example Benchmark" in card
    assert "Model: resnet18\nOriginal: 44.7 MB, 45.2 FPS\nOptimized: 11.2 MB, 127.8 FPS\n" in card
    assert "Results: 75% size reduction, 2.8x speedup, 0.8% accuracy loss" in card
    assert f"![Pareto]({CHART_NAME})" in card
    assert "| methods | status | size (MB) | size ratio | speedup | accuracy loss | score | reason |" in card
    assert "| svd+static | rejected | 7.9 | 0.18 | 2.9 | 0.03 | 0.5 | accuracy loss 0.0300 exceeds" in card
    assert "4.0%" in card, "the timing noise is stated"
    assert "![Pareto]" not in build_card(REPORT, SOURCE, chart=False).content


def test_cli_prints_the_cards_candidates_table(capsys):
    print_report({**REPORT, "optimization_time_seconds": 1.0})
    out = capsys.readouterr().out
    assert "methods  " in out and "size ratio" in out and "accuracy loss" in out and "reason" in out
    for row in candidate_rows(REPORT):
        assert all(str(value) in out for value in row if value not in (None, "")), row
    assert "Timing noise: 4.0%" in out


def test_optimizer_output_dir_and_cache_entry_hold_the_chart(tmp_path):
    model = build("KitchenSink")
    optimized, report = optimize_downloaded_model(model, "k", example_inputs=example("KitchenSink"), config=FAST, output_dir=tmp_path / "out")
    assert (tmp_path / "out" / CHART_NAME).read_bytes().startswith(b"\x89PNG") and report["artifacts"]["chart"] == CHART_NAME
    write_entry(tmp_path / "entry", optimized, report, SOURCE)
    assert (tmp_path / "entry" / CHART_NAME).read_bytes() == pareto_png(report)
    assert f"![Pareto]({CHART_NAME})" in (tmp_path / "entry" / "README.md").read_text()


def test_saving_the_same_model_gives_the_same_bytes(tmp_path):
    # safetensors keeps metadata in a Rust HashMap whose order changes from map to map: without a
    # canonical header the same model saved twice differed in bytes.
    model, _ = optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"),
                                         config={**FAST, "enable_low_rank_optimization": False, "benchmark_optimizations": False})
    digests = set()
    for run in range(6):
        pdo_hub.save_optimized(model, tmp_path / str(run))
        digests.add(hashlib.sha256((tmp_path / str(run) / "model.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1, "one model, several byte layouts"
    reloaded = pdo_hub.load_optimized(tmp_path / "0", build("MLP", seed=5))
    with torch.inference_mode():
        assert torch.equal(reloaded(example("MLP")), model(example("MLP")))
