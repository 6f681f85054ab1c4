"""Every registered method: apply -> save -> fresh skeleton -> load -> identical outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pdo_hub
from pdo_hub.optimizers import available_methods
from helpers import apply_method
from tiny_models import MODELS, build, example

METHODS = available_methods()


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_exact(method, model_name, tmp_path):
    model = build(model_name)
    x = example(model_name)
    optimized, records = apply_method(method, model, x)
    with torch.inference_mode():
        expected = optimized(x)
    pdo_hub.save_optimized(optimized, tmp_path)
    skeleton = build(model_name, seed=123)  # different random weights: everything must come from the file
    reloaded = pdo_hub.load_optimized(tmp_path, skeleton)
    with torch.inference_mode():
        actual = reloaded(x)
    assert torch.equal(actual, expected), f"{method} on {model_name}: max diff {(actual - expected).abs().max()}"
    assert reloaded.pdo_recipe.records == json.loads(json.dumps(records))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_changes_the_kitchen_sink_model(method):
    """Each method must find something to do in a model with convs, BN, a reused ReLU and linears."""
    model = build("KitchenSink")
    optimized, records = apply_method(method, model, example("KitchenSink"), target_compression_ratio=0.5)
    assert records, f"{method} applied nothing to a model with Conv2d and Linear layers"
    assert all(record["method"] == method for record in records)


@pytest.mark.parametrize("method", METHODS)
def test_apply_leaves_the_callers_model_untouched(method):
    model = build("KitchenSink")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_method(method, model, example("KitchenSink"))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shared_module_stays_shared_after_svd(tmp_path):
    model = build("SharedBlock")
    optimized, records = apply_method("svd", model, example("SharedBlock"), target_compression_ratio=0.6)
    assert any(r["module"] in ("first", "second") for r in records)
    assert optimized.first is optimized.second, "a module registered under two names must stay one module"
    pdo_hub.save_optimized(optimized, tmp_path)
    reloaded = pdo_hub.load_optimized(tmp_path, build("SharedBlock", seed=5))
    assert reloaded.first is reloaded.second


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model = build("TiedLM")
    optimized, _ = apply_method("svd", model, example("TiedLM"))
    assert optimized.head.weight is optimized.embed.weight, "svd must not factor a weight tied to another module"
    pdo_hub.save_optimized(optimized, tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert sum(1 for name in stored if name in ("embed.weight", "head.weight")) == 1
    reloaded = pdo_hub.load_optimized(tmp_path, build("TiedLM", seed=9))
    assert reloaded.head.weight is reloaded.embed.weight
    assert torch.equal(reloaded.embed.weight, model.embed.weight)


def test_reload_in_a_fresh_process_gives_identical_outputs(tmp_path):
    model = build("KitchenSink")
    x = example("KitchenSink")
    full, records_svd = apply_method("svd", model, x, target_compression_ratio=0.6)
    full, records_dyn = apply_method("dynamic", full, x)
    full.pdo_recipe.records = records_svd + records_dyn
    with torch.inference_mode():
        expected = full(x)
    pdo_hub.save_optimized(full, tmp_path / "model")
    assert_reloads_in_fresh_process(tmp_path, x, expected, "from tiny_models import build", 'build("KitchenSink", seed=77)')


@pytest.mark.parametrize("pipeline", [["svd"], ["tucker"], ["hlrtf", "static"], ["prune", "static"]])
def test_compressed_resnets_reload_in_a_fresh_process(pipeline, tmp_path):
    """Factored or pruned convs with their BatchNorms folded, alone or then int8, rebuilt from the recipe alone."""
    from test_lowrank import tiny_resnet

    model, x = tiny_resnet(), torch.randn(2, 3, 16, 16)
    optimized, records = model, []
    for method in pipeline:
        optimized, new = apply_method(method, optimized, x, target_compression_ratio=0.5, recovery_steps=3)
        records += new
    optimized.pdo_recipe.records = records
    assert any("folded_norms" in r for r in records), "the BatchNorms should have been folded"
    with torch.inference_mode():
        expected = optimized(x)
    pdo_hub.save_optimized(optimized, tmp_path / "model")
    assert_reloads_in_fresh_process(tmp_path, x, expected, "from test_lowrank import tiny_resnet", "tiny_resnet(seed=77)")


def assert_reloads_in_fresh_process(tmp_path, x, expected, import_line: str, skeleton: str) -> None:
    """A new interpreter loads tmp_path/model onto `skeleton` (built after `import_line`, tests/ importable) and must reproduce `expected`."""
    save_file({"x": x, "expected": expected}, str(tmp_path / "io.safetensors"))
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from safetensors.torch import load_file
import pdo_hub
{import_line}
io = load_file({str(tmp_path / 'io.safetensors')!r})
model = pdo_hub.load_optimized({str(tmp_path / 'model')!r}, {skeleton})
with torch.inference_mode():
    out = model(io["x"])
sys.exit(0 if torch.equal(out, io["expected"]) else 1)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
