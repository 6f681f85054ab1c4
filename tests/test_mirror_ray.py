"""`pdo-hub mirror --ray`: builds as tasks on a local Ray cluster give what local mode gives, survive a
killed worker, build once with two drivers, and fail clearly without Ray or a reachable cluster.

One local cluster (2 CPUs) serves the module; in-process runs use this process's connection to it, the
two-driver test joins it by address from two `pdo-hub` processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from crash_harness import check_complete_or_absent, leftovers
from hub_helpers import FAST_CONFIG, mirror_json, save_tiny_bert, write_manifest
from shared_tier_fixtures import s3  # noqa: F401  (fixture)
from shared_tier_fixtures import tier_env

from pdo_hub.cli import main

BERTS = [f"pdo-test/ray-bert-{seed}" for seed in range(5)]
TOKEN = "hf_pdoRaySecretTok3n_4b5a6c7d8e9f"  # distinctive: any hit is this token


@pytest.fixture(scope="module")
def ray_cluster() -> str:
    """A local 2-CPU Ray cluster for the module; its address."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def bert_repos(hub_server, tmp_path_factory) -> list[str]:
    for seed, repo in enumerate(BERTS):
        hub_server.store.publish(repo, save_tiny_bert(tmp_path_factory.mktemp("ray_bert"), seed=20 + seed),
                                 message="tiny bert for mirror --ray")
    return BERTS


def _entry_files(cache: Path, entry: str) -> dict[str, str]:
    """{file: sha256} of an entry from its manifest, keyed by the entry's place in the cache."""
    folder = Path(entry)
    files = json.loads((folder / "pdo_manifest.json").read_text(encoding="utf-8"))["files"]
    return {f"{folder.relative_to(cache).as_posix()}/{name}": record["sha256"] for name, record in files.items()}


def test_ray_mirror_of_six_models_gives_the_same_entries_and_weights_bytes_as_local_mode(
        ray_cluster, bert_repos, resnet18_weights, tmp_path, capsys, monkeypatch):
    path = write_manifest(tmp_path, [f"hf:{repo}" for repo in bert_repos] + ["torchvision:resnet18:IMAGENET1K_V1"])
    runs = {}
    for mode, extra in (("local", ()), ("ray", ("--ray",))):
        cache = tmp_path / f"cache_{mode}"
        monkeypatch.setenv("PDO_HUB_CACHE", str(cache))
        code, result = mirror_json(capsys, str(path), *extra)
        assert code == 0, result
        assert [e["status"] for e in result["entries"]] == ["optimized"] * 6, result
        runs[mode] = {name: sha for e in result["entries"] for name, sha in _entry_files(cache, e["entry"]).items()}
    # The report and the card hold measured times, which differ between any two builds; everything else,
    # the weights above all, must be the same bytes at the same place.
    timed = ("optimization_report.json", "README.md", "pdo_manifest.json")
    same = {name: sha for name, sha in runs["local"].items() if not name.endswith(timed)}
    assert sum(name.endswith("/model.safetensors") for name in same) == 6
    assert {name: runs["ray"].get(name) for name in same} == same
    assert sorted(runs["ray"]) == sorted(runs["local"]), "the Ray entries hold other files or sit elsewhere"


def test_ray_summary_table_and_exit_code_match_local_mode(ray_cluster, bert_repos, hub_server, tmp_path, capsys,
                                                          monkeypatch):
    broken = "pdo-test/ray-broken"  # resolves (planning passes) but has no weights: the build itself fails
    hub_server.store.publish(broken, {"config.json": b'{"model_type": "bert"}'}, message="no weights")
    path = write_manifest(tmp_path, [f"hf:{bert_repos[0]}", "hf:pdo-test/ray-does-not-exist", f"hf:{broken}"])
    outputs = {}
    for mode, extra in (("local", ()), ("ray", ("--ray",))):
        monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / f"cache_{mode}"))
        code = main(["mirror", str(path), "--quiet", *extra])
        outputs[mode] = code, capsys.readouterr()
    assert outputs["local"][0] == outputs["ray"][0] == 1
    assert outputs["ray"][1].out == outputs["local"][1].out
    table = outputs["ray"][1].out
    assert "3 entries: 0 fetched, 1 optimized, 0 skipped, 2 failed" in table and "RepositoryNotFound" in table
    assert "pdo-hub: 2 of 3 entries failed" in outputs["ray"][1].err


def test_ray_worker_killed_mid_commit_is_retried_and_no_partial_entry_is_left(ray_cluster, bert_repos, tmp_path,
                                                                              capsys, monkeypatch):
    trace, once = tmp_path / "trace.txt", tmp_path / "killed-once"
    monkeypatch.setenv("PDO_HUB_TEST_KILL_AT", "place.renaming")  # the complete temp entry, just before its rename
    monkeypatch.setenv("PDO_HUB_TEST_KILL_ONCE", str(once))
    monkeypatch.setenv("PDO_HUB_TEST_TRACE", str(trace))
    path = write_manifest(tmp_path, [f"hf:{bert_repos[1]}"])
    code, result = mirror_json(capsys, str(path), "--ray")
    assert once.exists(), "no worker was killed: the test did not test a retry"
    assert code == 0 and result["entries"][0]["status"] == "optimized", result
    renames = [line.split()[1] for line in trace.read_text().splitlines() if line.startswith("place.renaming")]
    assert len(renames) == 2 and renames[0] != renames[1], f"expected a killed worker and a retry in another: {renames}"
    cache = Path(os.environ["PDO_HUB_CACHE"])
    assert check_complete_or_absent(cache, {}) == []
    assert len(list(cache.glob("models--*/entries/*"))) == 1
    assert leftovers(cache) == [], "the killed attempt's temp folder outlived the retry"


def test_ray_worker_lost_on_every_attempt_is_a_failed_entry_after_the_retries(ray_cluster, bert_repos, tmp_path,
                                                                              capsys, monkeypatch):
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("PDO_HUB_TEST_KILL_AT", "optimize.start")  # every attempt dies: a model too big for a worker
    monkeypatch.setenv("PDO_HUB_TEST_TRACE", str(trace))
    path = write_manifest(tmp_path, [f"hf:{bert_repos[4]}"])
    code, result = mirror_json(capsys, str(path), "--ray", "--ray-retries", "1")
    assert code == 1 and result["counts"]["failed"] == 1
    error = result["entries"][0]["error"]
    assert error.startswith("its Ray worker was lost on all 2 attempts: WorkerCrashedError"), error
    attempts = {line.split()[1] for line in trace.read_text().splitlines() if line.startswith("optimize.start")}
    assert len(attempts) == 2, f"--ray-retries 1 means two attempts in two workers, got {len(attempts)}"
    assert check_complete_or_absent(Path(os.environ["PDO_HUB_CACHE"]), {}) == []


def test_two_ray_drivers_at_once_build_each_entry_once(ray_cluster, bert_repos, tmp_path):
    trace = tmp_path / "trace.txt"
    path = write_manifest(tmp_path, [{"source": f"hf:{repo}", "config": {**FAST_CONFIG, "seed": 31}} for repo in bert_repos[2:4]])
    command = [sys.executable, "-m", "pdo_hub.cli", "mirror", str(path), "--ray", ray_cluster, "--json", "--quiet"]
    env = {**os.environ, "PDO_HUB_TEST_TRACE": str(trace)}
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [driver.communicate(timeout=300) for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    results = [json.loads(out)["entries"] for out, _ in outputs]
    for index in range(2):
        statuses = sorted(entries[index]["status"] for entries in results)
        assert statuses == ["optimized", "skipped"], "the second driver must reuse the first one's build"
    builds = [line for line in trace.read_text().splitlines() if line.startswith("flow.building")]
    assert len(builds) == 2, f"one build per entry expected, got {len(builds)}"


def test_two_ray_drivers_on_two_machines_build_each_entry_once_and_a_third_machine_only_pulls(
        ray_cluster, bert_repos, s3, tmp_path):
    """Two machines (their own local caches, so no shared file lock) mirror one manifest on Ray at once with
    one shared tier: the tier's build lease makes it one build per entry, and the results are published
    there: a third machine with an empty cache mirrors the manifest without building anything."""
    trace = tmp_path / "trace.txt"
    path = write_manifest(tmp_path, [{"source": f"hf:{repo}", "config": {**FAST_CONFIG, "seed": 37}} for repo in bert_repos[2:4]])
    tier = {**os.environ, **tier_env(s3), "PDO_HUB_TEST_TRACE": str(trace)}

    def driver(machine: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pdo_hub.cli", "mirror", str(path), *extra, "--json", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**tier, "PDO_HUB_CACHE": str(tmp_path / machine)})

    drivers = [driver(machine, "--ray", ray_cluster) for machine in ("machine-a", "machine-b")]
    outputs = [process.communicate(timeout=300) for process in drivers]
    assert [process.returncode for process in drivers] == [0, 0], outputs
    results = [json.loads(out)["entries"] for out, _ in outputs]
    for index in range(2):
        statuses = sorted(entries[index]["status"] for entries in results)
        assert statuses == ["optimized", "skipped"], f"entry {index}: the second machine must pull the first one's build"
    assert len([line for line in trace.read_text().splitlines() if line.startswith("flow.building")]) == 2
    out, err = driver("machine-c").communicate(timeout=300)
    assert [entry["status"] for entry in json.loads(out)["entries"]] == ["skipped", "skipped"], err
    assert len([line for line in trace.read_text().splitlines() if line.startswith("flow.building")]) == 2
    assert len(list((tmp_path / "machine-c").glob("models--*/entries/*"))) == 2, "not pulled into the third machine"


def test_hub_token_reaches_ray_workers_but_no_ray_log_or_record(ray_cluster, tmp_path, capsys, monkeypatch):
    from fault_hub import use_endpoint

    from pdo_hub.serve import HubServer, RepoStore

    store = RepoStore(tmp_path / "token_store")
    store.publish("org/private-bert", save_tiny_bert(tmp_path / "bert", seed=40), message="private", private=True)
    with HubServer(store, tokens={TOKEN: {"user": "ci", "scopes": ["read"], "namespaces": ["org"]}}) as server:
        use_endpoint(monkeypatch, server.url)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        code, result = mirror_json(capsys, str(write_manifest(tmp_path, ["hf:org/private-bert"])), "--ray")
    assert code == 0 and result["entries"][0]["status"] == "optimized", "the worker did not get the token"
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    found = [p for p in session.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert found == [], f"the token is in Ray's session files: {found}"


def test_cuda_entry_fails_at_once_when_no_ray_node_has_a_gpu(ray_cluster, bert_repos, tmp_path, capsys):
    path = write_manifest(tmp_path, [{"source": f"hf:{bert_repos[0]}", "config": {**FAST_CONFIG, "device": "cuda"}}])
    code, result = mirror_json(capsys, str(path), "--ray")
    assert code == 1
    assert "no node of the Ray cluster has 1 CPU, 1 GPU" in result["entries"][0]["error"]


def test_worker_settings_send_tokens_and_keys_as_secrets_and_the_rest_as_runtime_env():
    from pdo_hub.mirror._ray_settings import worker_settings

    plain, secrets = worker_settings({
        "PDO_HUB_CACHE": "/c", "PDO_HUB_SHARED_CACHE": "s3://b/p", "HF_ENDPOINT": "http://hub", "HF_HUB_OFFLINE": "1",
        "AWS_ENDPOINT_URL": "http://s3", "TORCH_HOME": "/t", "PATH": "/bin", "HF_TOKEN": TOKEN,
        "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "session",
        "FSSPEC_S3_KEY": "key", "PDO_HUB_UPSTREAM_TOKEN": "upstream"})
    assert plain == {"PDO_HUB_CACHE": "/c", "PDO_HUB_SHARED_CACHE": "s3://b/p", "HF_ENDPOINT": "http://hub",
                     "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL": "http://s3", "TORCH_HOME": "/t"}
    assert repr(secrets) == ("Secrets(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, FSSPEC_S3_KEY, "
                             "HF_TOKEN, PDO_HUB_UPSTREAM_TOKEN)")
    with secrets.applied():
        assert os.environ["HF_TOKEN"] == TOKEN and os.environ["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert "HF_TOKEN" not in os.environ and "AWS_SECRET_ACCESS_KEY" not in os.environ


def test_ray_before_the_manifest_takes_no_address_and_a_dry_run_plans_as_local_mode(bert_repos, tmp_path, capsys):
    path = write_manifest(tmp_path, [f"hf:{bert_repos[0]}"])
    code = main(["mirror", "--ray", str(path), "--dry-run", "--json", "--quiet"])
    assert code == 0
    assert [e["status"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["would optimize"]


def test_ray_task_reserves_three_times_the_weights_plus_512_mib_and_a_gpu_only_for_cuda(bert_repos, hub_server, tmp_path):
    from pdo_hub.cache import OptimizedCache
    from pdo_hub.mirror import parse_manifest, plan_entry
    from pdo_hub.mirror._ray_settings import task_resources, unschedulable

    manifest = parse_manifest({"models": [{"source": f"hf:{bert_repos[0]}", "config": FAST_CONFIG},
                                          {"source": f"hf:{bert_repos[0]}", "config": {**FAST_CONFIG, "device": "cuda"}}]},
                              base=tmp_path)
    cpu, cuda = (plan_entry(entry, offline=False, cache=OptimizedCache()) for entry in manifest.entries)
    weights = next(f.size for f in hub_server.store.list_files(bert_repos[0], cpu.revision) if f.path == "model.safetensors")
    assert task_resources(cpu, cpus=2, memory=None) == {"num_cpus": 2, "num_gpus": 0, "memory": 3 * weights + 512 * 2**20}
    assert task_resources(cuda, cpus=1, memory=2**30) == {"num_cpus": 1, "num_gpus": 1, "memory": 2**30}
    small_node = {"CPU": 4, "memory": 2**29}
    estimated = task_resources(cpu, cpus=1, memory=None)
    assert unschedulable(estimated, [small_node], estimated=True) is None and estimated["memory"] == 2**29
    assert "1.0 GiB memory" in unschedulable(task_resources(cpu, cpus=1, memory=2**30), [small_node], estimated=False)


def test_ray_not_installed_is_one_error_naming_the_scale_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does without the package
    path = write_manifest(tmp_path, ["hf:pdo-test/anything"])
    assert main(["mirror", str(path), "--ray", "--quiet"]) == 2
    assert "pip install 'pdo-hub[scale]'" in capsys.readouterr().err


def test_ray_address_nothing_listens_at_is_one_error_naming_the_address(bert_repos, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        path = write_manifest(tmp_path, [f"hf:{bert_repos[0]}"])
        done = subprocess.run([sys.executable, "-m", "pdo_hub.cli", "mirror", str(path), "--ray", address, "--quiet"],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"pdo-hub: error: Cannot reach the Ray cluster at {address}"), done.stderr
    assert "Traceback" not in done.stderr and "ray start --head" in done.stderr
