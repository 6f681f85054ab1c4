"""Real processes: two ask for the same model at once (one optimizes, the other waits and reuses it),
then a third loads it with the Hub server stopped and HF_HUB_OFFLINE=1, with identical outputs; and a
hung build holds up others only until PDO_HUB_LOCK_TIMEOUT, and not at all once it is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_fixtures import MINILM_REPO_ID, minilm_source_files
from hub_helpers import FAST_CONFIG
from safetensors.torch import load_file

from pdo_hub.serve import HubServer

WORKER = r"""
import json, sys
import torch
from safetensors.torch import save_file
import pdo_hub
from transformers import AutoTokenizer
config = json.loads(sys.argv[2])
model = pdo_hub.from_pretrained(sys.argv[1], config=config)
folder = str(model.pdo_cache_path)
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer(["A man is playing a guitar.", "Offline reuse works."], padding=True, return_tensors="pt")
with torch.inference_mode():
    out = model(**inputs).last_hidden_state.contiguous()
save_file({"out": out}, sys.argv[3])
print(json.dumps({"status": model.pdo_cache_status, "path": folder,
                  "optimizations": model.pdo_report["optimizations_applied"]}))
"""


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf_cache"),
               PDO_HUB_CACHE=str(tmp_path / "pdo_cache"), PDO_HUB_VERBOSITY="info", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _start(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    config = json.dumps(dict(FAST_CONFIG, calibration_samples=4))
    return subprocess.Popen([sys.executable, "-c", WORKER, MINILM_REPO_ID, config, str(tmp_path / f"{name}.safetensors")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[dict, str]:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1]), stderr


@pytest.mark.slow
def test_concurrent_processes_optimize_once_then_offline_reuse_with_server_stopped(tmp_path):
    server = HubServer(tmp_path / "store", port=0).start()
    try:
        server.store.publish(MINILM_REPO_ID, minilm_source_files())
        url = server.url  # kept: after stop() nothing listens there, so a stray request fails at once
        env = _env(tmp_path, url)
        first, second = _start(tmp_path, "a", env), _start(tmp_path, "b", env)
        results = [_finish(first), _finish(second)]
    finally:
        server.stop()

    statuses = sorted(result["status"] for result, _ in results)
    assert statuses == ["built", "hit"], f"exactly one process may optimize, got {statuses}"
    waiter_log = next(log for result, log in results if result["status"] == "hit")
    assert "Waited" in waiter_log and "Optimizing" not in waiter_log
    assert results[0][0]["path"] == results[1][0]["path"]
    assert results[0][0]["optimizations"] == ["quantization_dynamic"]

    # The server is stopped: any request would fail (and take ~20 s of retries without offline mode).
    offline, log = _finish(_start(tmp_path, "c", _env(tmp_path, url, HF_HUB_OFFLINE="1")))
    assert offline["status"] == "hit" and "Optimizing" not in log
    outputs = [load_file(str(tmp_path / f"{name}.safetensors"))["out"] for name in "abc"]
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[2])



HANGING_BUILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import pdo_hub.hub.local as local
from tiny_models import MLP

def hang(config):
    print("building", flush=True)
    time.sleep(600)

local.create_post_download_optimizer = hang
local.load_local(sys.argv[1], architecture=MLP, config=json.loads(sys.argv[3]))
"""


def test_hung_build_times_out_naming_its_process_and_a_killed_one_frees_the_lock(tmp_path, monkeypatch, caplog):
    from safetensors.torch import save_file
    from tiny_models import MLP

    from pdo_hub.core.errors import CacheLockTimeoutError
    from pdo_hub.hub.local import load_local

    weights = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), weights)
    cache_dir = tmp_path / "pdo_cache"
    monkeypatch.setenv("PDO_HUB_CACHE", str(cache_dir))
    env = dict(os.environ, PDO_HUB_CACHE=str(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    hung = subprocess.Popen([sys.executable, "-c", HANGING_BUILD, str(weights), str(Path(__file__).parent),
                             json.dumps(FAST_CONFIG)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert hung.stdout.readline().strip() == "building"  # it holds the key's lock now
        monkeypatch.setenv("PDO_HUB_LOCK_TIMEOUT", "1")
        with pytest.raises(CacheLockTimeoutError, match=f"process {hung.pid} on host"):
            load_local(weights, architecture=MLP, config=FAST_CONFIG)
        hung.kill()  # SIGKILL: no clean-up runs; the kernel drops its lock
        hung.wait(timeout=30)
        with caplog.at_level("WARNING", logger="pdo_hub"):
            model = load_local(weights, architecture=MLP, config=FAST_CONFIG)
        assert model.pdo_cache_status == "built"
        assert f"process {hung.pid}" in caplog.text and "did not finish" in caplog.text
    finally:
        hung.kill()
        hung.wait(timeout=30)
