"""`pdo-hub push --format onnx`: the ONNX export in one commit, loaded back through the Hub by pdo_hub.

A tiny BERT is optimized (dynamic int8) and pushed as ONNX to the session Hub server. That server is
pdo-hub's own `pdo-hub serve` app (`pdo_hub.serve`), so pushing to it and downloading from it with
`pdo_hub.from_pretrained` is the "pdo-hub serve serves them" round trip: the same commit a user would
fetch, through huggingface_hub's client, with no optimizer run and only the ONNX file the record names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hub_helpers import FAST_CONFIG, encode, hidden, tiny_bert_variant
from huggingface_hub import ModelCard

import pdo_hub
from pdo_hub.core.errors import PushError, RecipeError
from pdo_hub.export import OnnxRuntimeModel, load_exported, read_variant
from pdo_hub.export._inputs import calibration_inputs
from pdo_hub.export.onnx_format import export_onnx
from pdo_hub.push import push_entry

BASE = "pdo-test/onnx-push-tiny-bert"
PUSHED = "org/tiny-onnx"
ONNX_FILES = {"model.onnx", "model_quantized.onnx", "config.json", "ort_config.json", "pdo_export.json",
              "tokenizer.json", "pdo_source.json", "optimization_report.json", "README.md"}


@pytest.fixture(scope="module")
def variant(hub_server, tmp_path_factory):
    return tiny_bert_variant(hub_server, tmp_path_factory, BASE)


@pytest.fixture(scope="module")
def pushed(variant, hub_server) -> dict:
    return push_entry(variant.pdo_cache_path, PUSHED, format="onnx")


def _card(hub_server, repo_id: str, tmp_path) -> ModelCard:
    path = tmp_path / "README.md"
    path.write_bytes(hub_server.store.read_bytes(repo_id, "README.md"))
    return ModelCard.load(path)


def test_onnx_push_is_one_commit_of_the_export_folder(pushed, hub_server):
    files = {f.path for f in hub_server.store.list_files(PUSHED, pushed["commit_sha"])}
    assert ONNX_FILES <= files, ONNX_FILES - files
    assert not {"model.safetensors", "pdo_recipe.json"} & files, "pdo-hub's own weights are not part of an ONNX repo"
    assert hub_server.store.resolve(PUSHED) == pushed["commit_sha"]
    record = json.loads(hub_server.store.read_bytes(PUSHED, "pdo_export.json"))
    assert record == pushed["export"] and record["format"] == "onnx" and record["scheme"] == "dynamic"
    assert record["parity"]["output_cosine"] >= 0.98, record["parity"]


def test_from_pretrained_of_the_pushed_onnx_repo_matches_the_local_export(variant, pushed, hub_server, monkeypatch,
                                                                          tmp_path):
    from pdo_hub.hub import transformers_models

    local = tmp_path / "local_export"
    export_onnx(read_variant(variant.pdo_cache_path), local, calibration_inputs(read_variant(variant.pdo_cache_path)))
    monkeypatch.setattr(transformers_models, "create_post_download_optimizer",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the optimizer ran")))
    model = pdo_hub.from_pretrained(PUSHED)
    assert isinstance(model, OnnxRuntimeModel) and model.pdo_export == pushed["export"]
    assert model.pdo_cache_status == "built" and model.pdo_report["optimizations_applied"]
    downloaded = {p.name for p in Path(model.pdo_cache_path).iterdir()}
    assert "model_quantized.onnx" in downloaded and "model.onnx" not in downloaded, \
        f"only the ONNX file the record names is downloaded: {sorted(downloaded)}"
    inputs = encode()
    with torch.inference_mode():
        remote, exported = model(**inputs), load_exported(local)(**inputs)
    torch.testing.assert_close(remote, exported, rtol=1e-5, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(remote.flatten(), hidden(variant, inputs).flatten(), dim=0).item()
    assert cos >= 0.98, f"the ONNX model drifts from the PyTorch variant: cosine {cos:.4f}"
    assert pdo_hub.from_pretrained(PUSHED).pdo_cache_status == "hit"


def test_onnx_card_says_onnx_and_carries_the_parity(pushed, hub_server, tmp_path):
    card = _card(hub_server, PUSHED, tmp_path)
    assert card.data.library_name == "onnx"
    assert {"onnx", "onnxruntime", "int8", "pdo-hub"} <= set(card.data.tags)
    assert card.data.pdo_hub["format"] == "onnx" and card.data.base_model == BASE
    parity = next(r for r in card.data.eval_results if r.metric_name == "ONNX Runtime output cosine vs the PyTorch variant")
    assert parity.metric_value == pushed["export"]["parity"]["output_cosine"]
    assert "ort.InferenceSession(hf_hub_download('org/tiny-onnx', 'model_quantized.onnx'))" in card.text
    assert "ORTModelForFeatureExtraction.from_pretrained('org/tiny-onnx', file_name='model_quantized.onnx')" in card.text
    assert "pdo_hub.from_pretrained('org/tiny-onnx')" in card.text
    assert "ONNX Runtime vs the PyTorch variant" in card.text and "pareto.png" not in card.text


def test_cli_push_format_onnx_reports_the_parity(variant, hub_server, tmp_path, capsys):
    from pdo_hub.cli import main

    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"post_download_optimization": FAST_CONFIG}))
    assert main(["push", f"hf:{BASE}", "--config", str(config), "--repo-id", "org/tiny-onnx-cli", "--format", "onnx",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Load it with onnxruntime (the repo's model_quantized.onnx)" in out and "output cosine" in out
    files = {f.path for f in hub_server.store.list_files("org/tiny-onnx-cli", hub_server.store.resolve("org/tiny-onnx-cli"))}
    assert ONNX_FILES <= files


def test_mirror_manifest_push_format_onnx_publishes_the_onnx_files(variant, hub_server, tmp_path, capsys):
    from pdo_hub.cli import main

    manifest = tmp_path / "mirror.yaml"
    manifest.write_text(yaml.safe_dump({"models": [{"source": f"hf:{BASE}", "config": FAST_CONFIG,
                                                    "push": "org/tiny-mirror-onnx", "push_format": "onnx"}]}))
    assert main(["mirror", str(manifest), "--json", "--quiet"]) == 0, capsys.readouterr()
    repo = "org/tiny-mirror-onnx"
    files = {f.path for f in hub_server.store.list_files(repo, hub_server.store.resolve(repo))}
    assert ONNX_FILES <= files and "pdo_recipe.json" not in files
    assert json.loads(hub_server.store.read_bytes(repo, "pdo_export.json"))["format"] == "onnx"


def test_unknown_push_format_names_every_format(variant):
    with pytest.raises(PushError, match=r"Unknown push format 'gguf'.*\['pdo', 'transformers', 'onnx'\]"):
        push_entry(variant.pdo_cache_path, "org/x", format="gguf")


def test_an_onnx_record_naming_a_path_outside_the_repo_root_is_refused(pushed, hub_server, tmp_path):
    """The record is downloaded: a file name with a folder in it must not choose what is read."""
    files = {name: hub_server.store.read_bytes(PUSHED, name)
             for name in ("pdo_source.json", "optimization_report.json", "config.json", "model_quantized.onnx")}
    record = {**pushed["export"], "file_name": "../model_quantized.onnx"}
    files["pdo_export.json"] = json.dumps(record).encode()
    hub_server.store.publish("org/tiny-onnx-bad", files, message="bad record")
    with pytest.raises(RecipeError, match=r"names ONNX file '\.\./model_quantized\.onnx', not a plain \*\.onnx file name"):
        pdo_hub.from_pretrained("org/tiny-onnx-bad")
