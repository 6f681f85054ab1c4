"""pdo_hub.from_pretrained and the Auto classes against the session Hub server, with the real clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert

import pdo_hub
from pdo_hub.cache import OptimizedCache
from pdo_hub.core.errors import ConfigError, OfflineCacheMissError
from pdo_hub.hub import transformers_models

TINY = "pdo-test/tiny-bert"


@pytest.fixture(scope="module")
def tiny_repo(hub_server, tmp_path_factory) -> tuple[str, str]:
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
    return TINY, hub_server.store.publish(TINY, folder, message="tiny bert")


def _no_optimizer(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the optimizer ran on a cache hit")

    monkeypatch.setattr(transformers_models, "create_post_download_optimizer", refuse)


def test_miss_builds_then_offline_hit_makes_no_request_and_no_optimizer_run(tiny_repo, hub_server, monkeypatch):
    repo_id, sha = tiny_repo
    first = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert first.pdo_cache_status == "built"
    assert first.pdo_report["optimizations_applied"] == ["quantization_dynamic"]
    assert Path(first.pdo_cache_path).name.startswith(sha)

    _no_optimizer(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_server.clear_requests()
    again = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert hub_server.requests == [], "an offline cache hit must not touch the network"
    assert again.pdo_cache_status == "hit"
    inputs = encode()
    assert torch.equal(hidden(first, inputs), hidden(again, inputs))
    assert again.pdo_report == first.pdo_report


def test_online_hit_requests_only_the_revision(tiny_repo, hub_server):
    repo_id, sha = tiny_repo
    pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    hub_server.clear_requests()
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert model.pdo_cache_status == "hit"
    assert hub_server.requests == [("GET", f"/api/models/{repo_id}/revision/main")]
    hub_server.clear_requests()
    pinned = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    assert pinned.pdo_cache_status == "hit" and hub_server.requests == [], "a commit sha needs no resolution"


def test_new_upstream_commit_is_a_new_entry_never_a_stale_hit(hub_server, tmp_path, monkeypatch):
    repo_id = "pdo-test/moving-bert"
    sha1 = hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "v1", seed=1))
    old = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    sha2 = hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "v2", seed=2))
    assert sha1 != sha2
    new = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert new.pdo_cache_status == "built" and Path(new.pdo_cache_path).name.startswith(sha2)
    assert not torch.equal(hidden(old, encode()), hidden(new, encode()))
    # Offline, `main` resolves to the newest commit seen online.
    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    offline = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert offline.pdo_cache_path == new.pdo_cache_path
    assert OptimizedCache().resolve_ref("huggingface", repo_id, "main") == sha2


def test_offline_miss_says_what_is_missing_and_how_to_fetch(tiny_repo, monkeypatch):
    repo_id, _ = tiny_repo
    with pytest.raises(OfflineCacheMissError, match=r"pdo_hub.from_pretrained\('pdo-test/tiny-bert'"):
        pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG, local_files_only=True)
    pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = dict(FAST_CONFIG, preserve_accuracy_threshold=0.05)
    with pytest.raises(OfflineCacheMissError, match="not in the optimized cache") as err:
        pdo_hub.from_pretrained(repo_id, config=other)
    assert "HF_HUB_OFFLINE" in str(err.value) and "config hash" in str(err.value)


def test_damaged_entry_is_rebuilt_online_and_an_error_offline(tiny_repo, monkeypatch):
    repo_id, _ = tiny_repo
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    weights = Path(model.pdo_cache_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    rebuilt = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert rebuilt.pdo_cache_status == "built"
    assert torch.equal(hidden(model, encode()), hidden(rebuilt, encode()))
    weights = Path(rebuilt.pdo_cache_path) / "model.safetensors"
    weights.write_bytes(b"x" * weights.stat().st_size)  # same size: only caught when loading
    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    with pytest.raises(OfflineCacheMissError):
        pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)


def test_auto_classes_have_the_transformers_signature_and_their_own_entries(tiny_repo):
    repo_id, _ = tiny_repo
    base = pdo_hub.AutoModel.from_pretrained(repo_id, config=FAST_CONFIG)
    classifier = pdo_hub.AutoModelForSequenceClassification.from_pretrained(repo_id, pdo_config=FAST_CONFIG, num_labels=3)
    assert classifier.pdo_cache_path != base.pdo_cache_path
    with torch.inference_mode():
        assert classifier(**encode()).logits.shape == (1, 3)
    again = pdo_hub.AutoModelForSequenceClassification.from_pretrained(repo_id, pdo_config=FAST_CONFIG, num_labels=3)
    assert again.pdo_cache_status == "hit"
    with torch.inference_mode():
        assert torch.equal(classifier(**encode()).logits, again(**encode()).logits)


def test_bad_arguments_fail_with_the_fix(tiny_repo):
    repo_id, _ = tiny_repo
    with pytest.raises(ConfigError, match="AutoModelForSequenceClassification"):
        pdo_hub.from_pretrained(repo_id, auto_class="NotAClass", config=FAST_CONFIG)
    with pytest.raises(ConfigError, match="never runs code"):
        pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG, trust_remote_code=True)


@pytest.mark.slow
def test_minilm_entry_has_card_report_and_source_files(minilm_repo, hub_server, monkeypatch):
    from huggingface_hub import ModelCard

    repo_id, sha = minilm_repo
    secret = "hf_pdo_test_secret_token_123"
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG, token=secret)
    entry = Path(model.pdo_cache_path)
    for name in ("model.safetensors", "pdo_recipe.json", "optimization_report.json", "README.md", "config.json",
                 "tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert (entry / name).is_file(), f"{name} missing from the entry"
    manifest = json.loads((entry / "pdo_manifest.json").read_text())
    assert {"model.safetensors", "README.md", "1_Pooling/config.json"} <= set(manifest["files"])
    for path in entry.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the token leaked into {path.name}"

    card = ModelCard.load(entry / "README.md")
    assert card.data.base_model == repo_id
    assert card.data.base_model_relation == "quantized"
    assert {"pdo-hub", "dynamic"} <= set(card.data.tags)
    assert card.data.pdo_hub["config_hash"] == pdo_hub.load_config(FAST_CONFIG).config_hash()
    for section in ("## Size", "## Accuracy", "## Candidates tried", "## Environment", "## How to load"):
        assert section in card.text
    assert "| dynamic | selected |" in card.text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_server.clear_requests()
    _no_optimizer(monkeypatch)
    again = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert hub_server.requests == []
    inputs = encode("A man is playing a guitar.")
    assert torch.equal(hidden(model, inputs), hidden(again, inputs))
