"""Concurrency: many processes and threads asking for one uncached model run one optimization and all get
byte-identical results; a build of one model never delays another model.

Bigger counts (more processes and threads, two mirrors on one cache) are in scripts/stress.py.
"""

from __future__ import annotations

import threading
import time

import torch
from concurrency_worker import ask_together
from hub_helpers import FAST_CONFIG, save_tiny_bert
from safetensors.torch import save_file
from tiny_models import MLP

import pdo_hub.hub.local as local
from pdo_hub.hub.local import load_local


def test_4_processes_of_8_threads_optimize_one_model_once_with_identical_results(hub_server, tmp_path):
    repo_id = "pdo-test/concurrent-bert"
    hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "source", seed=11))
    started = time.perf_counter()
    results, trace = ask_together(repo_id, FAST_CONFIG, processes=4, threads=8, workdir=tmp_path / "run")
    seconds = time.perf_counter() - started

    errors = [r["error"] for r in results if "error" in r]
    assert len(results) == 32 and not errors, errors[:3]
    builds = [line for line in trace if line.startswith("flow.building ")]
    assert len(builds) == 1, f"exactly one optimization, got {len(builds)}: {builds}"
    assert sum(r["status"] == "built" for r in results) == 1
    assert len({r["weights"] for r in results}) == 1, "every caller gets the same model.safetensors"
    assert len({r["output"] for r in results}) == 1, "every caller's model gives the same output"
    assert seconds < 300, f"took {seconds:.0f} s"


def test_a_blocked_build_does_not_delay_another_models_build(tmp_path, monkeypatch):
    config = FAST_CONFIG
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        files[name] = tmp_path / f"{name}.safetensors"
        torch.manual_seed(seed)
        save_file(MLP().state_dict(), files[name])
    building_a, release_a = threading.Event(), threading.Event()
    real_factory = local.create_post_download_optimizer

    def gated_factory(opt_config):
        optimizer = real_factory(opt_config)
        optimize = optimizer.optimize_model

        def optimize_model(*args, model_name="model", **kwargs):
            if model_name == "a":  # holds a's lock, mid-build, until released
                building_a.set()
                release_a.wait(120)
            return optimize(*args, model_name=model_name, **kwargs)

        optimizer.optimize_model = optimize_model
        return optimizer

    monkeypatch.setattr(local, "create_post_download_optimizer", gated_factory)
    loaded = {}

    def load(name: str) -> None:
        loaded[name] = load_local(files[name], architecture=MLP, config=config)

    first = threading.Thread(target=load, args=("a",), daemon=True)
    first.start()
    try:
        assert building_a.wait(60), "the build of a did not start"
        second = threading.Thread(target=load, args=("b",), daemon=True)
        second.start()
        second.join(60)
        assert "b" in loaded and loaded["b"].pdo_cache_status == "built", "b waited for a's build"
        assert first.is_alive() and "a" not in loaded
    finally:
        release_a.set()
        first.join(60)
    assert loaded["a"].pdo_cache_status == "built"
