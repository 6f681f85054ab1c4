"""`pdo-hub push` and loading pushed variants, against the session Hub server with the stock clients.

A tiny BERT is published, optimized into an entry, pushed to `org/tiny-pdo`, then loaded back with a
clean optimized cache and a clean Hub client cache, as another machine would: no optimizer run,
identical outputs, and offline afterwards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert
from huggingface_hub import ModelCard

import pdo_hub
from pdo_hub.core.constants import cache_dir
from pdo_hub.core.errors import InvalidRepoIdError, PushError, RecipeError
from pdo_hub.hub import torchvision_models, transformers_models, variants
from pdo_hub.push import push_entry
from pdo_hub.serve import HubServer, RepoStore

BASE = "pdo-test/push-tiny-bert"
PUSHED = "org/tiny-pdo"
SECRET = "secret-token-123"
READER = "reader-token-789"  # may read, never write
ENTRY_ONLY = {"pdo_manifest.json", ".pdo_access"}


@pytest.fixture(scope="module")
def base_repo(hub_server, tmp_path_factory) -> str:
    hub_server.store.publish(BASE, save_tiny_bert(tmp_path_factory.mktemp("push_base")), message="tiny bert")
    return BASE


@pytest.fixture(scope="module")
def variant(base_repo, tmp_path_factory):
    """The optimized tiny BERT, built in a cache of its own (tests get fresh caches: the 'other machine')."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PDO_HUB_CACHE", str(tmp_path_factory.mktemp("builder_cache")))
        return pdo_hub.from_pretrained(base_repo, config=FAST_CONFIG)


@pytest.fixture(scope="module")
def pushed(variant, hub_server) -> dict:
    return push_entry(variant.pdo_cache_path, PUSHED)


def _refuse_optimizer(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the optimizer ran for a published variant")

    monkeypatch.setattr(transformers_models, "create_post_download_optimizer", refuse)
    monkeypatch.setattr(torchvision_models, "create_post_download_optimizer", refuse)


def test_push_uploads_the_variant_in_one_commit(variant, pushed, hub_server):
    store, entry = hub_server.store, Path(variant.pdo_cache_path)
    assert pushed["repo_id"] == PUSHED and pushed["commit_sha"] == store.resolve(PUSHED)
    assert pushed["repo_url"].endswith(f"/{PUSHED}")
    history = store.history(PUSHED)
    assert len(history) == 2 and history[1].files == {}, "one commit on top of the repo's empty initial commit"
    expected = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()} - ENTRY_ONLY
    assert {f.path for f in store.list_files(PUSHED, pushed["commit_sha"])} == expected == set(pushed["files"])
    assert {"model.safetensors", "pdo_recipe.json", "optimization_report.json", "README.md", "pdo_source.json",
            "config.json", "tokenizer.json", "tokenizer_config.json"} <= expected
    for name in ("model.safetensors", "pdo_recipe.json", "optimization_report.json", "config.json"):
        assert store.read_bytes(PUSHED, name) == (entry / name).read_bytes(), f"{name} changed on the way"


def test_pushed_card_follows_hub_conventions(variant, pushed, hub_server, tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(hub_server.store.read_bytes(PUSHED, "README.md"))
    card = ModelCard.load(path)
    assert card.data.base_model == BASE
    assert card.data.base_model_relation == "quantized"
    assert card.data.library_name == "pdo-hub", "stock transformers cannot load a pdo-format variant"
    assert "transformers" not in card.data.tags and {"pdo-hub", "dynamic"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "feature-extraction"
    assert card.data.pdo_hub["pushed_as"] == PUSHED
    assert card.data.model_name == PUSHED
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    size = variant.pdo_report["model_size_metrics"]["size_reduction_percent"]
    assert metrics["size_reduction_percent"] == size
    assert metrics["accuracy_loss"] == variant.pdo_report["accuracy_metrics"]["accuracy_loss"]
    assert {r.task_type for r in card.data.eval_results} == {"feature-extraction"}
    assert f"pdo_hub.from_pretrained('{PUSHED}')" in card.text and f"Published as `{PUSHED}`" in card.text


def test_pushed_variant_loads_as_published_on_a_clean_machine(variant, pushed, hub_server, tmp_path, monkeypatch,
                                                               caplog):
    _refuse_optimizer(monkeypatch)
    hf_cache = str(tmp_path / "hf_cache")
    hub_server.clear_requests()
    loaded = pdo_hub.from_pretrained(PUSHED, cache_dir=hf_cache)
    assert not any(BASE in path for _, path in hub_server.requests), "the base model must not be fetched"
    assert loaded.pdo_report == variant.pdo_report
    assert Path(loaded.pdo_cache_path).name.startswith(pushed["commit_sha"])
    assert loaded.config._name_or_path == PUSHED
    inputs = encode()
    assert torch.equal(hidden(variant, inputs), hidden(loaded, inputs))

    # Any config maps to the one published entry; the caller is told it is not applied.
    hub_server.clear_requests()
    with caplog.at_level(logging.INFO, logger="pdo_hub.hub.variants"):
        other = pdo_hub.from_pretrained(PUSHED, cache_dir=hf_cache, config="aggressive")
    assert other.pdo_cache_status == "hit" and other.pdo_cache_path == loaded.pdo_cache_path
    assert hub_server.requests == [("GET", f"/api/models/{PUSHED}/revision/main")], "one request on an online hit"
    assert "used as published" in caplog.text and "config" in caplog.text

    pinned = pdo_hub.from_pretrained(PUSHED, revision=pushed["commit_sha"], cache_dir=hf_cache)
    assert pinned.pdo_cache_path == loaded.pdo_cache_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_server.clear_requests()
    offline = pdo_hub.from_pretrained(PUSHED, cache_dir=hf_cache)
    assert hub_server.requests == [], "an offline load of a published variant must not touch the network"
    assert offline.pdo_cache_status == "hit"
    assert torch.equal(hidden(variant, inputs), hidden(offline, inputs))


def test_a_pinned_published_commit_is_recognised_without_a_branch(pushed, hub_server, tmp_path, monkeypatch):
    _refuse_optimizer(monkeypatch)
    model = pdo_hub.from_pretrained(PUSHED, revision=pushed["commit_sha"], cache_dir=str(tmp_path / "hf"))
    assert model.pdo_cache_status == "built" and model.pdo_report["optimizations_applied"] == ["quantization_dynamic"]


def test_token_is_used_and_never_uploaded_or_logged(variant, tmp_path, caplog):
    store = RepoStore(tmp_path / "auth_store")
    tokens = {SECRET: "org", READER: {"user": "reader", "scopes": ["read"]}}
    with HubServer(store, tokens=tokens) as server, caplog.at_level(logging.DEBUG):
        result = push_entry(variant.pdo_cache_path, "org/secret-pdo", endpoint=server.url, token=SECRET)
        with pytest.raises(PushError) as refused:
            push_entry(variant.pdo_cache_path, "org/other-pdo", endpoint=server.url, token="wrong-token-456")
        with pytest.raises(PushError, match="write access") as forbidden:
            push_entry(variant.pdo_cache_path, "org/secret-pdo", endpoint=server.url, token=READER)
    assert store.resolve("org/secret-pdo") == result["commit_sha"]
    for entry in store.list_files("org/secret-pdo", result["commit_sha"]):
        assert SECRET.encode() not in store.read_bytes("org/secret-pdo", entry.path), f"token in {entry.path}"
    assert SECRET not in caplog.text
    message = str(refused.value)
    assert "wrong-token-456" not in message
    assert "hf auth login" in message and "HF_TOKEN" in message
    assert not store.exists("org/other-pdo")
    assert READER not in str(forbidden.value) and store.resolve("org/secret-pdo") == result["commit_sha"]


def test_token_comes_from_hf_token(variant, tmp_path, monkeypatch):
    store = RepoStore(tmp_path / "env_store")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with HubServer(store, tokens={SECRET: "org"}) as server:
        result = push_entry(variant.pdo_cache_path, "org/env-pdo", endpoint=server.url)
    assert store.resolve("org/env-pdo") == result["commit_sha"]


def test_unreachable_hub_is_a_push_error(variant):
    with pytest.raises(PushError, match="Cannot reach") as err:
        push_entry(variant.pdo_cache_path, "org/nowhere", endpoint="http://127.0.0.1:9", token=SECRET)
    assert SECRET not in str(err.value)


def test_push_refuses_bad_ids_incomplete_folders_and_damaged_entries(variant, tmp_path):
    with pytest.raises(InvalidRepoIdError):
        push_entry(variant.pdo_cache_path, "../escape")
    with pytest.raises(PushError, match="own base model"):
        push_entry(variant.pdo_cache_path, BASE)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(PushError, match="not a pdo-hub variant"):
        push_entry(tmp_path / "half", "org/half")
    copy = tmp_path / "copy"
    for path in Path(variant.pdo_cache_path).rglob("*"):
        if path.is_file():
            (copy / path.relative_to(variant.pdo_cache_path)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(variant.pdo_cache_path)).write_bytes(path.read_bytes())
    weights = copy / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    with pytest.raises(PushError, match="damaged"):
        push_entry(copy, "org/damaged")


@pytest.mark.parametrize("loader", [
    {"library": "transformers", "auto_class": "os.system"},
    {"library": "custom", "module": "evil.py:Model"},
    {"library": "torchvision", "builder": "resnet18", "kwargs": {"weights": "DEFAULT"}},
    {"library": "torchvision", "builder": "not_a_model", "kwargs": {}},
])
def test_hostile_source_records_are_refused_before_caching(variant, hub_server, loader, tmp_path):
    kind = "torchvision" if loader["library"] == "torchvision" else "huggingface"
    entry = Path(variant.pdo_cache_path)
    files = {name: entry / name for name in ("model.safetensors", "pdo_recipe.json", "optimization_report.json",
                                             "config.json")}
    files["pdo_source.json"] = json.dumps({"kind": kind, "source_id": BASE, "loader": loader}).encode()
    repo_id = f"org/hostile-{loader['library']}-{len(json.dumps(loader))}"
    hub_server.store.publish(repo_id, files)
    with pytest.raises(RecipeError):
        pdo_hub.from_pretrained(repo_id, cache_dir=str(tmp_path / "hf"))
    assert not list(cache_dir().glob("models--org--hostile*/entries/*"))


def test_check_source_accepts_what_pdo_hub_writes(variant):
    record = json.loads((Path(variant.pdo_cache_path) / "pdo_source.json").read_text())
    assert variants.check_source(record, PUSHED) is record
    tv = {"kind": "torchvision", "loader": {"library": "torchvision", "builder": "resnet18", "kwargs": {"num_classes": 10}}}
    assert variants.check_source(tv, PUSHED) is tv


def test_torchvision_variant_round_trips(hub_server, tmp_path, monkeypatch):
    import torchvision

    path = torchvision_models.weights_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    if not path.is_file():  # seeded weights under the real file name: no download.pytorch.org
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PDO_HUB_CACHE", str(tmp_path / "builder"))
        original = pdo_hub.get_model("resnet18", weights="DEFAULT", config=FAST_CONFIG)
    result = push_entry(original.pdo_cache_path, "org/resnet18-pdo")
    _refuse_optimizer(monkeypatch)
    loaded = pdo_hub.from_pretrained("org/resnet18-pdo", cache_dir=str(tmp_path / "hf"))
    assert Path(loaded.pdo_cache_path).name.startswith(result["commit_sha"])
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(original(images), loaded(images))


def test_cli_push_optimizes_pushes_and_prints_the_commit(base_repo, hub_server, tmp_path, capsys):
    from pdo_hub.cli import main

    config = tmp_path / "fast.yaml"
    config.write_text("post_download_optimization:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in FAST_CONFIG.items()))
    code = main(["push", f"hf:{base_repo}", "--repo-id", "org/tiny-cli", "--config", str(config), "--quiet"])
    out = capsys.readouterr().out
    sha = hub_server.store.resolve("org/tiny-cli")
    assert code == 0 and sha in out and f"{hub_server.url}/org/tiny-cli" in out
    assert "pdo_hub.from_pretrained('org/tiny-cli')" in out
