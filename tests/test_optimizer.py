"""The seed's optimizer API: report contract, selection, safety of the input model, artifacts."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision

import pdo_hub
from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers import create_post_download_optimizer, optimize_downloaded_model
from tiny_models import build, example

FAST = {"benchmark_runs": 3, "benchmark_warmup": 1, "calibration_samples": 4}
SEED_REPORT_KEYS = {"model_name", "optimizations_applied", "model_size_metrics", "performance_metrics", "optimization_time_seconds"}


def test_seed_manual_optimization_example_on_resnet18(tmp_path):
    # The seed document's "Manual Optimization" example with `framework` renamed `pdo_hub`.
    from pdo_hub.optimizers import create_post_download_optimizer
    from pdo_hub.core.config import PostDownloadOptimizationConfig

    config = PostDownloadOptimizationConfig()
    config.enable_quantization = True
    config.quantization_method = "dynamic"
    config.enable_low_rank_optimization = True
    config.auto_select_best_method = True
    optimizer = create_post_download_optimizer(config)
    your_model = torchvision.models.resnet18()
    optimized_model, report = optimizer.optimize_model(
        model=your_model, model_name="my_model", example_inputs=torch.randn(1, 3, 224, 224)
    )
    assert f"Applied optimizations: {report['optimizations_applied']}"
    assert f"Size reduction: {report['model_size_metrics']['size_reduction_percent']:.1f}%"
    assert SEED_REPORT_KEYS <= report.keys()
    assert {"original_size_mb", "optimized_size_mb", "size_reduction_percent"} <= report["model_size_metrics"].keys()
    assert {"speedup", "original_fps", "optimized_fps"} <= report["performance_metrics"].keys()
    assert report["performance_metrics"]["original_fps"] > 0
    tried = {tuple(c["methods"]) for c in report["candidates"]}
    assert tried == {("svd",), ("dynamic",), ("svd", "dynamic")}
    assert report["accuracy_metrics"]["accuracy_loss"] <= config.preserve_accuracy_threshold
    json.dumps(report)  # the report is plain JSON


def test_sizes_are_the_bytes_of_the_safetensors_file(tmp_path):
    model = build("MLP")
    optimized, report = optimize_downloaded_model(model, "mlp", config={**FAST, "preserve_accuracy_threshold": 0.5}, example_inputs=example("MLP"))
    pdo_hub.save_optimized(optimized, tmp_path)
    on_disk = (tmp_path / "model.safetensors").stat().st_size
    assert report["model_size_metrics"]["optimized_size_bytes"] == on_disk


def test_input_model_is_never_modified():
    model = build("KitchenSink").train()  # a mode the optimizer must not change either
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimized, _ = optimize_downloaded_model(model, "k", config={**FAST, "preserve_accuracy_threshold": 0.5}, example_inputs=example("KitchenSink"))
    assert optimized is not model and model.training
    assert not hasattr(model, "pdo_report") and not hasattr(model, "pdo_recipe")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_disabled_returns_the_model_untouched():
    model = build("MLP")
    same, report = optimize_downloaded_model(model, "mlp", config={"enable_optimization": False})
    assert same is model
    assert report["optimizations_applied"] == [] and "unchanged" in report["notes"][0]


def test_auto_selection_keeps_the_best_candidate_within_budget():
    model = build("MLP", seed=3)
    _, report = optimize_downloaded_model(model, "mlp", config={**FAST, "preserve_accuracy_threshold": 0.05}, example_inputs=example("MLP"))
    selected = [c for c in report["candidates"] if c["status"] == "selected"]
    accepted = [c for c in report["candidates"] if c["status"] in ("selected", "accepted")]
    for candidate in report["candidates"]:
        if candidate["status"] == "rejected":
            assert candidate["reason"]
    if selected:
        assert selected[0]["score"] == max(c["score"] for c in accepted)
        assert selected[0]["accuracy_loss"] <= 0.05
        assert report["optimizations_applied"] == selected[0]["optimizations"]


def test_nothing_within_budget_returns_the_original_model_with_a_reason():
    model = build("MLP")
    x = example("MLP")
    optimized, report = optimize_downloaded_model(
        model, "mlp", example_inputs=x,
        config={**FAST, "preserve_accuracy_threshold": 0.0, "enable_quantization": False, "target_compression_ratio": 0.3},
    )
    assert report["optimizations_applied"] == []
    assert all(c["status"] == "rejected" for c in report["candidates"])
    assert any("No candidate" in note for note in report["notes"])
    with torch.inference_mode():
        assert torch.equal(optimized(x), model(x))


def test_without_auto_selection_the_configured_pipeline_comes_first():
    _, report = optimize_downloaded_model(
        build("MLP"), "mlp", example_inputs=example("MLP"),
        config={**FAST, "auto_select_best_method": False, "preserve_accuracy_threshold": 0.9, "target_compression_ratio": 0.8},
    )
    assert report["candidates"][0]["methods"] == ["svd", "dynamic"]
    assert report["optimizations_applied"] == ["tensor_factorization_svd", "quantization_dynamic"]


def test_a_method_that_fails_is_a_rejected_candidate_not_a_crash():
    # "static" needs a method this model cannot take (or, before it exists, an unknown name): never a crash.
    class Odd(torch.nn.Module):
        def forward(self, x):
            return x * 2

    model = Odd()
    optimized, report = optimize_downloaded_model(model, "odd", example_inputs=torch.randn(2, 3), config={**FAST})
    assert report["optimizations_applied"] == []
    assert all(c["status"] == "rejected" for c in report["candidates"])
    assert torch.equal(optimized(torch.ones(1)), torch.full((1,), 2.0))


def test_seed_artifacts_are_written_and_reload_without_pickle(tmp_path):
    model = build("KitchenSink")
    x = example("KitchenSink")
    optimized, report = optimize_downloaded_model(
        model, "k", example_inputs=x, output_dir=tmp_path, config={**FAST, "preserve_accuracy_threshold": 0.5}
    )
    names = {p.name for p in tmp_path.iterdir()}
    assert {"optimized_model.pt", "optimized_model_full.pt", "optimization_report.json", "model.safetensors", "pdo_recipe.json"} <= names
    saved = json.loads((tmp_path / "optimization_report.json").read_text())
    assert saved["optimizations_applied"] == report["optimizations_applied"]
    reloaded = pdo_hub.load_optimized(tmp_path, build("KitchenSink", seed=42))
    with torch.inference_mode():
        assert torch.equal(reloaded(x), optimized(x))


def test_no_artifacts_without_an_output_dir_or_when_saving_is_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"), config=FAST)
    optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"), config={**FAST, "save_optimized_model": False, "output_dir": str(tmp_path / "x")})
    assert list(tmp_path.iterdir()) == []


def test_debug_log_shows_per_layer_decisions(caplog):
    logging.getLogger("pdo_hub.optimizers").setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="pdo_hub.optimizers"):
            optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"), config=FAST)
    finally:
        logging.getLogger("pdo_hub.optimizers").setLevel(logging.NOTSET)
    messages = [r.getMessage() for r in caplog.records]
    assert any("fc2" in m and "rank" in m for m in messages), "svd must log its per-layer rank"
    assert any("fc2" in m and ("int8" in m or "float" in m) for m in messages), "dynamic must log its per-layer decision"


def test_example_inputs_are_guessed_when_missing():
    _, report = optimize_downloaded_model(build("MLP"), "mlp", config={**FAST, "preserve_accuracy_threshold": 0.5})
    assert report["model_size_metrics"]["original_size_mb"] > 0


def test_cuda_device_runs_there_or_fails_clearly():
    config = {**FAST, "device": "cuda", "preserve_accuracy_threshold": 0.5}
    if not torch.cuda.is_available():
        with pytest.raises(pdo_hub.ConfigError, match="no CUDA device"):
            optimize_downloaded_model(build("MLP"), "mlp", config=config)
        return
    _, report = optimize_downloaded_model(build("MLP"), "mlp", config=config, example_inputs=example("MLP"))
    assert report["environment"]["device"].startswith("cuda")
    assert any("dynamic" in note and "kernels" in note for note in report["notes"]), "dynamic int8 is CPU-only: the report must say so"


def test_train_data_reaches_methods_as_labelled_data(monkeypatch):
    from pdo_hub.core.errors import ConfigError
    from pdo_hub.optimizers.methods.qat import QATQuantization

    seen = []

    def spy(self, model, ctx):
        seen.append(ctx.extras.get("labelled_data"))
        return model, []

    monkeypatch.setattr(QATQuantization, "apply", spy)
    batches = [(torch.randn(4, 32), torch.randint(0, 2, (4,))) for _ in range(2)]
    config = {**FAST, "quantization_method": "qat", "enable_low_rank_optimization": False, "auto_select_best_method": False}
    optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"), train_data=iter(batches), config=config)
    assert seen and len(seen[0]) == 2, "qat must see the train_data batches as ctx.extras['labelled_data']"
    assert all(torch.equal(x, bx) and torch.equal(y, by) for (x, y), (bx, by) in zip(seen[0], batches))
    with pytest.raises(ConfigError, match="train_data\\[0\\]"):
        optimize_downloaded_model(build("MLP"), "mlp", example_inputs=example("MLP"), train_data=[torch.randn(4, 32)], config=config)
