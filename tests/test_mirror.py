"""`pdo-hub mirror`: manifests, incremental sync, failures, dry runs, offline runs, concurrent runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_helpers import FAST_CONFIG, mirror_json, save_tiny_bert, write_manifest

from pdo_hub.cli import main
from pdo_hub.core.errors import ConfigError
from pdo_hub.mirror import load_manifest, parse_manifest

REPO = "pdo-test/mirror-bert"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mirror_repo(hub_server, tmp_path_factory) -> str:
    folder = save_tiny_bert(tmp_path_factory.mktemp("mirror_bert"), seed=3)
    hub_server.store.publish(REPO, folder, message="tiny bert for the mirror")
    return REPO


def test_example_manifest_in_configs_parses():
    manifest = load_manifest(REPO_ROOT / "configs" / "mirror-example.yaml")
    assert [str(e.source) for e in manifest.entries] == ["hf:sentence-transformers/all-MiniLM-L6-v2@main",
                                                         "torchvision:resnet18:DEFAULT"]
    assert [e.config_label for e in manifest.entries] == ["conservative", "aggressive"]
    assert manifest.entries[1].config.enable_structured_pruning  # aggressive prunes


@pytest.mark.parametrize("data, message", [
    ({"models": [{"source": "hf:a/b", "presett": "aggressive"}]}, "unknown key 'presett'. Did you mean 'preset'"),
    ({"models": [{"source": "hf:a/b", "preset": "fastest"}]}, "preset 'fastest' is not one of"),
    ({"models": [{"source": "hf:a/b", "config": {"quantization_method": "dynamc"}}]}, "quantization_method"),
    ({"models": [{"source": "hf:../b"}]}, "is not a Hub repo id"),
    ({"models": [{"source": "hf:a/b@v1", "revision": "main"}]}, "pins revision 'v1'"),
    ({"models": []}, "non-empty list"),
    ({"models": ["hf:a/b", "hf:a/b"]}, "listed twice"),
    ({"models": [{"source": "hf:a/b", "calibration": "missing.txt"}]}, "calibration 'missing.txt' does not exist"),
    ({"defaults": {"revision": "main"}, "models": ["hf:a/b"]}, "defaults: unknown key 'revision'"),
])
def test_invalid_manifest_raises_config_error_naming_the_problem(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_manifest(data, base=tmp_path)


def test_inline_config_keys_refine_the_preset(tmp_path):
    manifest = parse_manifest({"models": [{"source": "hf:a/b", "preset": "aggressive",
                                           "config": {"preserve_accuracy_threshold": 0.01}}]}, base=tmp_path)
    config = manifest.entries[0].config
    assert config.enable_structured_pruning and config.preserve_accuracy_threshold == 0.01
    assert manifest.entries[0].config_label == "aggressive+1 key"


def test_second_run_skips_with_one_metadata_request_and_picks_up_a_new_commit(
        mirror_repo, resnet18_weights, hub_server, tmp_path, capsys):
    path = write_manifest(tmp_path, [{"source": f"hf:{mirror_repo}", "revision": "main"},
                                {"source": "torchvision:resnet18:IMAGENET1K_V1"}])
    code, first = mirror_json(capsys, str(path))
    assert code == 0, first
    assert [e["status"] for e in first["entries"]] == ["optimized", "optimized"]

    hub_server.clear_requests()
    code, second = mirror_json(capsys, str(path))
    assert code == 0 and [e["status"] for e in second["entries"]] == ["skipped", "skipped"]
    assert hub_server.requests == [("GET", f"/api/models/{mirror_repo}/revision/main")]
    assert [e["entry"] for e in second["entries"]] == [e["entry"] for e in first["entries"]]

    folder = save_tiny_bert(tmp_path / "v2", seed=4)
    new_sha = hub_server.store.publish(mirror_repo, folder, message="new weights upstream")
    code, third = mirror_json(capsys, str(path))
    assert [e["status"] for e in third["entries"]] == ["optimized", "skipped"]
    assert third["entries"][0]["revision"] == new_sha != first["entries"][0]["revision"]


def test_one_failing_entry_does_not_stop_the_others_and_exits_non_zero(mirror_repo, tmp_path, capsys):
    path = write_manifest(tmp_path, ["hf:pdo-test/does-not-exist", f"hf:{mirror_repo}", "torchvision:not_a_model"])
    code, result = mirror_json(capsys, str(path))
    assert code == 1
    statuses = {e["source"]: (e["status"], e["error"]) for e in result["entries"]}
    assert statuses[f"hf:{mirror_repo}"][0] == "optimized"
    assert statuses["hf:pdo-test/does-not-exist"][0] == "failed"
    assert "RepositoryNotFound" in statuses["hf:pdo-test/does-not-exist"][1]
    assert statuses["torchvision:not_a_model:DEFAULT"][0] == "failed"
    assert result["counts"] == {"fetched": 0, "optimized": 1, "skipped": 0, "failed": 2}


def test_dry_run_says_what_would_happen_and_writes_nothing(mirror_repo, tmp_path, capsys):
    path = write_manifest(tmp_path, [f"hf:{mirror_repo}"])
    code, result = mirror_json(capsys, str(path), "--dry-run")
    assert code == 0 and [e["status"] for e in result["entries"]] == ["would optimize"]
    cache = Path(os.environ["PDO_HUB_CACHE"])
    assert not any(cache.glob("models--*/entries/*")), "a dry run must not build anything"


def test_offline_run_uses_only_the_cache_and_makes_no_request(mirror_repo, hub_server, tmp_path, capsys, monkeypatch):
    path = write_manifest(tmp_path, [f"hf:{mirror_repo}"])
    assert mirror_json(capsys, str(path))[0] == 0
    missing = write_manifest(tmp_path, [f"hf:{mirror_repo}", {"source": f"hf:{mirror_repo}", "preset": "quality"}], "two.yaml")
    hub_server.clear_requests()
    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    code, result = mirror_json(capsys, str(missing), "--offline")
    assert hub_server.requests == []
    assert code == 1
    assert [e["status"] for e in result["entries"]] == ["skipped", "failed"]
    assert "--offline" in result["entries"][1]["error"]


def test_original_only_entry_is_fetched_into_the_hub_cache(hub_server, tmp_path, capsys):
    repo = "pdo-test/mirror-original-only"
    hub_server.store.publish(repo, save_tiny_bert(tmp_path / "bert", seed=5), message="never fetched before")
    path = write_manifest(tmp_path, [{"source": f"hf:{repo}", "optimize": False}])
    code, result = mirror_json(capsys, str(path))
    assert code == 0 and result["entries"][0]["status"] == "fetched"
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(repo, revision=result["entries"][0]["revision"], local_files_only=True))
    assert (local / "model.safetensors").is_file()
    code, again = mirror_json(capsys, str(path))
    assert again["entries"][0]["status"] == "skipped"


def test_two_mirror_processes_at_once_optimize_each_entry_once(mirror_repo, tmp_path):
    path = write_manifest(tmp_path, [{"source": f"hf:{mirror_repo}", "config": {**FAST_CONFIG, "seed": 7}}])
    command = [sys.executable, "-m", "pdo_hub.cli", "mirror", str(path), "--json", "--quiet"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    statuses = sorted(json.loads(out)["entries"][0]["status"] for out, _ in outputs)
    assert statuses == ["optimized", "skipped"], "the second mirror must wait for the first one's build and reuse it"
    entries = {json.loads(out)["entries"][0]["entry"] for out, _ in outputs}
    assert len(entries) == 1


def test_jobs_build_entries_in_worker_processes(mirror_repo, resnet18_weights, tmp_path, capsys):
    path = write_manifest(tmp_path, [f"hf:{mirror_repo}", "torchvision:resnet18:IMAGENET1K_V1"])
    code, result = mirror_json(capsys, str(path), "--jobs", "2")
    assert code == 0 and [e["status"] for e in result["entries"]] == ["optimized", "optimized"]
    assert all(Path(e["entry"]).is_dir() for e in result["entries"])


def test_push_option_publishes_each_variant_and_the_pushed_repo_loads_as_published(mirror_repo, hub_server, tmp_path, capsys):
    path = write_manifest(tmp_path, [{"source": f"hf:{mirror_repo}", "config": {**FAST_CONFIG, "seed": 9}}])
    code, result = mirror_json(capsys, str(path), "--push", "pdo-mirror-org")
    assert code == 0, result
    entry = result["entries"][0]
    from pdo_hub.mirror import push_name

    target = "pdo-mirror-org/" + push_name(load_manifest(path).entries[0])
    assert target.startswith("pdo-mirror-org/mirror-bert-pdo-")
    assert entry["status"] == "optimized" and target in entry["pushed_to"]
    pushed = hub_server.store.list_files(target, hub_server.store.resolve(target))
    assert {"model.safetensors", "pdo_recipe.json", "pdo_source.json", "README.md"} <= {f.path for f in pushed}


@pytest.mark.parametrize("source", ["hf:pdo-test/no-such-repo", "hf:{repo}@no-such-branch"])
def test_optimize_of_a_missing_repo_or_revision_is_one_error_line(mirror_repo, source, capsys):
    assert main(["optimize", source.format(repo=mirror_repo), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("pdo-hub: error: ")
    assert "NotFoundError" in err and "Check the repo id and revision" in err
