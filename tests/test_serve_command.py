"""`pdo-hub serve`: the optimized cache behind a Hub-compatible endpoint, for stock clients and pdo_hub."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2 as httpx
import pytest
from hub_helpers import FAST_CONFIG, save_tiny_bert

import pdo_hub
from pdo_hub.core.errors import ConfigError
from pdo_hub.serve import RepoStore
from pdo_hub.serve.service import ServeOptions, build_server

REPO = "pdo-test/served-bert"


@pytest.fixture(scope="module")
def served_repo(hub_server, tmp_path_factory) -> str:
    hub_server.store.publish(REPO, save_tiny_bert(tmp_path_factory.mktemp("served_bert"), seed=11), message="for serve")
    return REPO


@pytest.fixture
def variant(served_repo, tmp_path, monkeypatch) -> Path:
    """A variant of the tiny BERT built into a cache of its own; returns the cache root."""
    root = tmp_path / "served-cache"
    monkeypatch.setenv("PDO_HUB_CACHE", str(root))
    model = pdo_hub.from_pretrained(served_repo, config=FAST_CONFIG)
    assert model.pdo_cache_status == "built"
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stock_snapshot_download_gets_the_variant_under_its_own_commit(variant, served_repo, hub_server, tmp_path):
    upstream_sha = hub_server.store.resolve(served_repo)
    from huggingface_hub import snapshot_download

    with build_server(ServeOptions(port=0, cache=variant)) as server:
        local = Path(snapshot_download(served_repo, endpoint=server.url, cache_dir=tmp_path / "client"))
    assert local.name != upstream_sha, "a variant must never be served under the upstream commit"
    entry = next(variant.glob("models--pdo-test--served-bert/entries/*"))
    served = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"model.safetensors", "pdo_recipe.json", "optimization_report.json", "README.md", "pdo_source.json",
            "config.json"} <= served
    assert "pdo_manifest.json" not in served
    assert _sha256(local / "model.safetensors") == _sha256(entry / "model.safetensors")


def test_second_process_loads_the_served_variant_without_running_the_optimizer(variant, served_repo, tmp_path):
    script = textwrap.dedent(f"""
        import json, torch
        from pdo_hub.optimizers import optimizer
        def refuse(*a, **k):
            raise SystemExit("the optimizer ran")
        optimizer.PostDownloadOptimizer.optimize_model = refuse
        import pdo_hub
        model = pdo_hub.from_pretrained({served_repo!r})
        ids = torch.tensor([[101, 7592, 2088, 102]])
        with torch.inference_mode():
            total = float(model(input_ids=ids).last_hidden_state.sum())
        print(json.dumps({{"applied": model.pdo_report["optimizations_applied"], "sum": total}}))
    """)
    with build_server(ServeOptions(port=0, cache=variant)) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "hf2"),
               "PDO_HUB_CACHE": str(tmp_path / "pdo2")}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        requested = [path for _, path in server.requests]
    assert done.returncode == 0, done.stderr[-2000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    local = pdo_hub.from_pretrained(served_repo, config=FAST_CONFIG, local_files_only=True)
    import torch

    with torch.inference_mode():
        expected = float(local(input_ids=torch.tensor([[101, 7592, 2088, 102]])).last_hidden_state.sum())
    assert remote["applied"] == ["quantization_dynamic"] and remote["sum"] == pytest.approx(expected, abs=1e-5)
    assert any(path.endswith("/model.safetensors") for path in requested)


def test_upstream_pass_through_serves_originals_the_cache_does_not_hold(variant, hub_server, tmp_path):
    other = "pdo-test/only-upstream"
    sha = hub_server.store.publish(other, {"config.json": b'{"model_type": "bert"}', "weights.bin": b"\0" * 4096})
    from huggingface_hub import hf_hub_download

    with build_server(ServeOptions(port=0, cache=variant, upstream=hub_server.url)) as server:
        hub_server.clear_requests()
        first = hf_hub_download(other, "weights.bin", endpoint=server.url, cache_dir=tmp_path / "c1")
        upstream_after_first = len(hub_server.requests)
        second = hf_hub_download(other, "weights.bin", endpoint=server.url, cache_dir=tmp_path / "c2")
        assert len(hub_server.requests) <= upstream_after_first + 1, "a file is fetched from upstream once"
    assert Path(first).read_bytes() == Path(second).read_bytes() == b"\0" * 4096
    assert Path(first).parent.name == sha, "originals keep their upstream commit"


def test_post_models_download_fetches_and_optimizes_into_the_served_cache(served_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "elsewhere"))
    config = tmp_path / "fast.yaml"
    config.write_text(json.dumps({"post_download_optimization": FAST_CONFIG}))
    with build_server(ServeOptions(port=0, cache=tmp_path / "served", allow_downloads=True, config=str(config))) as server:
        answer = httpx.post(f"{server.url}/models/download",
                            json={"source": "huggingface", "model_id": served_repo}, timeout=300)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "success" and body["optimizations_applied"] == ["quantization_dynamic"]
        info = httpx.get(f"{server.url}/api/models/{served_repo}").json()
        assert any(s["rfilename"] == "pdo_recipe.json" for s in info["siblings"])
        bad = httpx.post(f"{server.url}/models/download", json={"source": "ftp", "model_id": "x"})
        assert bad.status_code == 400 and bad.headers["X-Error-Code"] == "BadRequest"
    assert not (tmp_path / "elsewhere").exists(), "the build goes into the served cache"


def test_downloads_endpoint_is_off_unless_enabled(variant):
    with build_server(ServeOptions(port=0, cache=variant)) as server:
        answer = httpx.post(f"{server.url}/models/download", json={"source": "huggingface", "model_id": REPO})
    assert answer.status_code == 404


def test_tokens_file_read_token_cannot_push_and_write_token_can(variant, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(textwrap.dedent("""
        [tokens."read-only-token-1"]
        user = "alice"
        scopes = ["read"]
        [tokens."write-token-2"]
        user = "ci-bot"
        scopes = ["read", "write"]
        namespaces = ["team"]
    """))
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with build_server(ServeOptions(port=0, cache=variant, tokens_file=tokens, repos=tmp_path / "repos")) as server:
        with pytest.raises(HfHubHTTPError) as refused:
            HfApi(endpoint=server.url, token="read-only-token-1").create_repo("alice/new")
        assert refused.value.response.status_code == 403
        api = HfApi(endpoint=server.url, token="write-token-2")
        api.create_repo("team/pushed")
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="team/pushed")
        assert "config.json" in api.list_repo_files("team/pushed")
    assert RepoStore(tmp_path / "repos").exists("team/pushed")


def test_non_loopback_bind_without_tokens_is_refused(variant):
    with pytest.raises(ConfigError, match="--insecure"):
        build_server(ServeOptions(host="0.0.0.0", port=0, cache=variant))


def _with_ctrl_c() -> None:
    """In the child: SIGINT as a terminal gives it (a suite run as a background job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_command_prints_its_url_serves_and_stops_gracefully_on_ctrl_c_or_sigterm(variant, served_repo, stop_signal):
    process = subprocess.Popen([sys.executable, "-m", "pdo_hub.cli", "serve", "--port", "0", "--cache", str(variant)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_with_ctrl_c)
    try:
        line = process.stdout.readline()
        url = line.split()[2]
        assert url.startswith("http://127.0.0.1:"), line
        info = httpx.get(f"{url}/api/models/{served_repo}", timeout=30).json()
        assert info["id"] == served_repo and any(s["rfilename"] == "pdo_recipe.json" for s in info["siblings"])
    finally:
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=30)  # drains both pipes: a full pipe would block the child
    assert process.returncode == 0, stderr
    assert "stopped" in stderr, stderr


def test_post_models_download_without_optimize_fetches_the_original(served_repo, variant, tmp_path):
    with build_server(ServeOptions(port=0, cache=variant, allow_downloads=True)) as server:
        answer = httpx.post(f"{server.url}/models/download",
                            json={"source": "huggingface", "model_id": served_repo, "optimize": False}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["optimized"] is False and "model.safetensors" in body["files"]
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(served_repo, revision=body["revision"], local_files_only=True))
    assert (local / "model.safetensors").is_file(), "the original is in the server's Hub client cache"


def test_serving_a_variant_never_imports_torch(variant, served_repo):
    # `pdo-hub serve` is a file server: torch would cost it ~500 MiB of memory and seconds of start-up.
    script = textwrap.dedent(f"""
        import sys
        import httpx2 as httpx
        from pdo_hub.cli import build_parser
        from pdo_hub.serve.service import ServeOptions, build_server
        build_parser()  # every command registered, as `pdo-hub serve` does
        with build_server(ServeOptions(port=0, cache={str(variant)!r})) as server:
            info = httpx.get(server.url + "/api/models/{served_repo}", timeout=30).json()
            for sibling in info["siblings"]:
                got = httpx.get(server.url + "/{served_repo}/resolve/main/" + sibling["rfilename"], timeout=30)
                assert got.status_code == 200, (sibling, got.status_code)
        print(sorted(name for name in ("torch", "transformers", "torchvision") if name in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_client_config_selects_its_variant_branch_and_without_one_gets_main(variant, served_repo, tmp_path):
    other_config = {**FAST_CONFIG, "calibration_samples": 3}  # another config hash: a second variant of the repo
    assert pdo_hub.from_pretrained(served_repo, config=other_config).pdo_cache_status == "built"
    hashes = {name: pdo_hub.load_config(cfg).config_hash()
              for name, cfg in (("fast", FAST_CONFIG), ("other", other_config))}
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        import pdo_hub
        picked = {{}}
        for name, config in (("fast", {FAST_CONFIG!r}), ("other", {other_config!r}), ("none", None)):
            model = pdo_hub.from_pretrained({served_repo!r}, config=config)
            source = json.loads((Path(model.pdo_cache_path) / "pdo_source.json").read_text())
            picked[name] = source["config_hash"]
        print(json.dumps(picked))
    """)
    with build_server(ServeOptions(port=0, cache=variant)) as server:
        main_sha = server.store.resolve(served_repo, "main")
        newest_is_main = main_sha == server.store.resolve(served_repo, "pdo-" + _variant_hash(variant, hashes["other"])[:16])
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "hf2"),
               "PDO_HUB_CACHE": str(tmp_path / "pdo2")}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    picked = json.loads(done.stdout.strip().splitlines()[-1])
    assert picked["fast"] == hashes["fast"] and picked["other"] == hashes["other"]
    assert main_sha and picked["none"] == hashes["other" if newest_is_main else "fast"]


def _variant_hash(cache_root: Path, config_hash: str) -> str:
    """The variant (key) hash of the cache entry built with `config_hash`."""
    for source in cache_root.glob("models--*/entries/*/pdo_source.json"):
        record = json.loads(source.read_text())
        if record["config_hash"] == config_hash:
            return record["key_hash"]
    raise AssertionError(f"no entry with config hash {config_hash}")
