"""`pdo-hub export --format onnx`: the variant's structure in ONNX, int8 by ONNX Runtime, parity reported.

A pruned + static CNN must keep its pruned widths in the ONNX graph, quantize to QDQ, and run in plain
onnxruntime in a process where pdo_hub cannot be imported; a dynamic tiny BERT exports through the CLI
with Optimum's file layout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from helpers import apply_method
from hub_helpers import FAST_CONFIG
from tiny_models import build, example

from pdo_hub.cli import main
from pdo_hub.export import Variant
from pdo_hub.export.onnx_format import export_onnx
from pdo_hub.optimizers.recipe import Recipe

_PLAIN_ORT = """
import sys, numpy as np
sys.modules["pdo_hub"] = None
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: x})[0])
"""


@pytest.fixture(scope="module")
def pruned_static(tmp_path_factory):
    """KitchenSink pruned to half its size, then static int8, exported to ONNX."""
    model, x = build("KitchenSink"), example("KitchenSink")
    pruned, prune_records = apply_method("prune", model, x, target_compression_ratio=0.5)
    quantized, static_records = apply_method("static", pruned, x)
    quantized.pdo_recipe = Recipe(prune_records + static_records)
    variant = Variant(None, {"loader": {"library": "torch"}, "source_id": "kitchen-sink"},
                      {"optimizations_applied": ["pruning_prune", "quantization_static"]}, quantized)
    out = tmp_path_factory.mktemp("onnx_cnn")
    calibration = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    record = export_onnx(variant, out, calibration, skeleton=build("KitchenSink"))
    return out, record, quantized, pruned


def _conv_out_channels(path: Path) -> list[int]:
    graph = onnx.load(str(path)).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    return [shapes[node.input[1]][0] for node in graph.node if node.op_type == "Conv"]


def test_pruned_widths_are_carried_into_the_onnx_graph(pruned_static):
    out, _, _, pruned = pruned_static
    pruned_widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert pruned_widths != [16, 32], "the fixture should have pruned some channels"
    assert _conv_out_channels(out / "model.onnx") == pruned_widths


def test_static_variant_becomes_qdq_int8_with_parity_in_the_report(pruned_static):
    out, record, _, _ = pruned_static
    ops = {node.op_type for node in onnx.load(str(out / "model_quantized.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert record["file_name"] == "model_quantized.onnx" and record["scheme"] == "static"
    parity = record["parity"]
    assert parity["output_cosine"] >= 0.99, f"ONNX int8 drifts from the PyTorch variant: {parity}"
    assert 0.0 <= parity["top1_agreement"] <= 1.0 and parity["latency_ms"]["onnxruntime"] > 0
    assert json.loads((out / "pdo_export.json").read_text()) == record
    assert json.loads((out / "ort_config.json").read_text())["quantization"]["format"] == "QDQ"


def test_exported_model_runs_in_plain_onnxruntime_without_pdo_hub(pruned_static, tmp_path):
    out, _, quantized, _ = pruned_static
    x = torch.randn(3, 3, 16, 16)
    np.save(tmp_path / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-I", "-c", _PLAIN_ORT, str(out / "model_quantized.onnx"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.inference_mode():
        expected = quantized(x)
    got = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) >= 0.99


def test_cli_exports_a_dynamic_transformers_variant_in_optimums_layout(hub_server, tmp_path, capsys):
    from hub_helpers import save_tiny_bert

    hub_server.store.publish("pdo-test/onnx-tiny-bert", save_tiny_bert(tmp_path / "base"), message="tiny bert")
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"post_download_optimization": FAST_CONFIG}))
    out = tmp_path / "onnx"
    code = main(["export", "hf:pdo-test/onnx-tiny-bert", "--config", str(config), "--format", "onnx", "--out", str(out),
                 "--json", "--quiet"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert {"model.onnx", "model_quantized.onnx", "config.json", "tokenizer.json", "ort_config.json",
            "pdo_export.json"} <= {p.name for p in out.iterdir()}
    assert record["scheme"] == "dynamic" and record["parity"]["output_cosine"] >= 0.98, record["parity"]
    ops = {node.op_type for node in onnx.load(str(out / "model_quantized.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    inputs = [i.name for i in onnx.load(str(out / "model.onnx")).graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"], "Optimum's input names"


def test_export_of_a_folder_that_is_not_a_variant_names_the_missing_file(tmp_path):
    from pdo_hub.core.errors import ExportError
    from pdo_hub.export import read_variant

    with pytest.raises(ExportError, match=r"not a pdo-hub variant \(model.safetensors is missing\)"):
        read_variant(tmp_path)


def test_load_exported_runs_the_onnx_folder_through_onnxruntime(pruned_static):
    import pdo_hub
    from pdo_hub.export import OnnxRuntimeModel

    out, record, quantized, _ = pruned_static
    model = pdo_hub.load_exported(out)
    assert isinstance(model, OnnxRuntimeModel) and model.pdo_export == record
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(model(x).flatten(), quantized(x).flatten(), dim=0) >= 0.99


def test_vision_export_calibrates_at_the_image_size_the_variant_was_traced_with(pruned_static):
    from pdo_hub.export._inputs import calibration_inputs

    _, _, quantized, _ = pruned_static
    variant = Variant(None, {"loader": {"library": "torch"}}, {"config": {"calibration_samples": 3}}, quantized)
    inputs = calibration_inputs(variant, None)
    assert len(inputs) == 3 and all(tuple(x.shape) == (1, 3, 16, 16) for x in inputs)


def test_a_head_pruned_bert_exports_fused_attention_with_each_layers_own_head_count(tmp_path):
    """ONNX Runtime's fuser gives every Attention the config's head count; a layer `prune` cut to fewer
    whole heads must get its own, or its narrower projection is split into heads of the wrong size."""
    from test_prune import TINY_BERT, _tiny_bert
    from transformers import BertConfig, BertModel

    model, x, config = _tiny_bert()
    pruned, prune_records = apply_method("prune", model, x, target_compression_ratio=0.7, recovery_steps=0)
    quantized, dynamic_records = apply_method("dynamic", pruned, x)
    quantized.pdo_recipe = Recipe(prune_records + dynamic_records)
    kept = [pruned.get_submodule(f"encoder.layer.{i}.attention.self").num_attention_heads for i in range(2)]
    assert min(kept) < TINY_BERT["num_attention_heads"], f"the fixture should prune some heads: {kept}"
    folder = tmp_path / "variant"
    config.save_pretrained(folder)
    variant = Variant(folder, {"loader": {"library": "transformers", "auto_class": "AutoModel"}, "source_id": "tiny-bert"},
                      {"optimizations_applied": ["pruning_prune", "quantization_dynamic"]}, quantized)
    generator = torch.Generator().manual_seed(3)
    inputs = []
    for length in (9, 16, 23, 12, 30, 7, 18, 25):
        ids = torch.randint(5, 200, (1, length), generator=generator)
        inputs.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    record = export_onnx(variant, tmp_path / "onnx", inputs, skeleton=BertModel(BertConfig(**TINY_BERT)))
    graph = onnx.load(str(tmp_path / "onnx" / "model_quantized.onnx")).graph
    attention = [node for node in graph.node if node.op_type == "QAttention"]
    assert len(attention) == 2, sorted({node.op_type for node in graph.node})
    heads = [next(a.i for a in node.attribute if a.name == "num_heads") for node in attention]
    assert heads == kept
    assert record["parity"]["output_cosine"] >= 0.99, record["parity"]
