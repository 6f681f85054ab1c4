"""The shared cache tier on an S3-compatible server (moto's, on 127.0.0.1): lookup order, single-winner
publication, integrity on pull, build leases across "machines" (separate local caches and processes),
and what a dead store or a killed publisher leaves behind."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from shared_tier_fixtures import env, s3  # noqa: F401  (fixtures)
from shared_tier_fixtures import closed_port, make_bucket, run_worker, start_s3_server, tier_env

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.cache import shared_tier as shared_tier_module
from pdo_hub.cache.layout import entry_folder_name
from pdo_hub.cache.shared_tier import SharedTier
from pdo_hub.core.errors import ConfigError

KEY = CacheKey("huggingface", "org/model", "a" * 40, "1" * 64)


def _tier(env) -> SharedTier:
    return SharedTier(env["PDO_HUB_SHARED_CACHE"])


def _writer(weights: bytes, calls: list | None = None, seconds: float = 0.0):
    def build(folder: Path) -> None:
        if calls is not None:
            calls.append(threading.get_ident())
        time.sleep(seconds)
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text('{"model_type": "bert"}')

    return build


def _never(folder: Path) -> None:
    raise AssertionError("built although the shared tier has the entry")


def _objects(tier: SharedTier, key: CacheKey = KEY) -> list[str]:
    return sorted(tier.objects.find(tier._uploads(key)))


def _local_entry_folders(root: Path) -> list[Path]:
    return sorted(root.glob("*/entries/*"))


# --- lookup order and round trip -----------------------------------------------------------------


def test_an_entry_built_on_one_machine_is_pulled_unchanged_into_another_machines_empty_cache(env, tmp_path):
    built = OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"weights" * 1000))
    pulled = OptimizedCache(tmp_path / "b").get_or_create(KEY, _never)
    assert pulled.path == tmp_path / "b" / built.path.relative_to(tmp_path / "a")
    assert pulled.manifest == built.manifest, "the pulled entry carries the publisher's manifest"
    for name in built.files:
        assert pulled.file_path(name).read_bytes() == built.file_path(name).read_bytes()
    assert not list((tmp_path / "b" / ".tmp").iterdir()), "the download folder was placed or removed"


def test_a_local_hit_does_not_touch_the_shared_tier(env, tmp_path, monkeypatch):
    cache = OptimizedCache(tmp_path / "a")
    cache.get_or_create(KEY, _writer(b"w"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")  # any tier call would now fail
    started = time.perf_counter()
    assert cache.lookup(KEY) is not None
    assert time.perf_counter() - started < 0.5


def test_a_local_folder_works_as_a_shared_tier(tmp_path, monkeypatch):
    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", f"file://{tmp_path / 'nfs'}")
    OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"w" * 10))
    assert OptimizedCache(tmp_path / "b").get_or_create(KEY, _never).file_path("model.safetensors").read_bytes() == b"w" * 10


def test_an_unsupported_url_or_a_missing_bucket_name_is_a_config_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", "ftp://host/cache")
    with pytest.raises(ConfigError, match="'ftp' protocol is not supported"):
        OptimizedCache(tmp_path).lookup(KEY)
    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", "s3://")
    with pytest.raises(ConfigError, match="names no bucket"):
        OptimizedCache(tmp_path).lookup(KEY)


def test_credentials_in_the_url_are_refused_without_being_repeated(tmp_path, monkeypatch):
    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", "s3://AKIASECRET:verysecret@bucket/prefix")
    with pytest.raises(ConfigError, match="holds credentials") as raised:
        OptimizedCache(tmp_path).lookup(KEY)
    assert "verysecret" not in str(raised.value) and "AKIASECRET" not in str(raised.value)


# --- publication ---------------------------------------------------------------------------------


def test_two_concurrent_publishers_of_one_key_leave_one_entry_and_the_loser_deletes_its_objects(env, tmp_path, monkeypatch):
    with monkeypatch.context() as local_only:  # commit locally only; publish by hand below
        local_only.delenv("PDO_HUB_SHARED_CACHE")
        entries = [OptimizedCache(tmp_path / name).commit(KEY, _writer(name.encode() * 5000)) for name in ("a", "b")]
    tier, barrier, results = _tier(env), threading.Barrier(2), {}

    def publish(entry):
        barrier.wait()
        results[entry.path] = tier.publish(entry)

    threads = [threading.Thread(target=publish, args=(entry,)) for entry in entries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [False, True], f"exactly one winner, got {results}"
    [winner] = [entry for entry in entries if results[entry.path]]
    record = json.loads(tier.objects.read(tier.record_path(KEY)))
    assert record["manifest"]["files"] == winner.manifest["files"]
    uploads = {path.split("/objects/")[1].split("/")[1] for path in _objects(tier)}
    assert uploads == {record["upload"]}, "only the winner's objects remain"
    assert tier.publish(winner) is False, "a key is published once"
    pulled = OptimizedCache(tmp_path / "c").get_or_create(KEY, _never)
    assert pulled.file_path("model.safetensors").read_bytes() == winner.file_path("model.safetensors").read_bytes()


# Every point a build passes with a shared tier: lease taken, local commit, publication steps.
BUILD_POINTS = ["lease.acquired", "commit.tmp_created", "commit.placed", "commit.shared_publishing",
                "shared.objects_uploaded", "shared.record_created"]


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_a_builder_killed_at_any_point_leaves_the_tier_complete_or_absent_and_the_next_one_finishes(env, tmp_path, point):
    run = run_worker(tmp_path / "killed", KEY, env, kill_at=point)
    assert run.returncode == -signal.SIGKILL, run.stderr
    tier = _tier(env)
    if point == "shared.objects_uploaded":
        assert _objects(tier) and not tier.has(KEY), "uploaded files without a record are invisible"
    reader = OptimizedCache(tmp_path / "reader")
    found = reader.lookup(KEY)
    assert (found is not None) == tier.has(KEY), "a record always names a complete entry"
    if found is None:
        assert not _local_entry_folders(tmp_path / "reader")
    calls = []
    built = OptimizedCache(tmp_path / "next").get_or_create(KEY, _writer(b"w" * 300_000, calls))
    assert len(calls) == (0 if found else 1)
    assert OptimizedCache(tmp_path / "third").get_or_create(KEY, _never).manifest == built.manifest
    leases = tier.objects.names(tier.objects.path(".leases", "models--org--model", built.path.name))
    # Killed after publishing, its lease stays (nobody builds a published key); else it was taken over.
    assert leases == (["00000000"] if found else []), leases


def test_a_tampered_remote_file_is_a_miss_never_served_and_the_next_build_replaces_it(env, tmp_path, caplog):
    OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"good" * 1000))
    tier = _tier(env)
    weights = next(path for path in _objects(tier) if path.endswith("model.safetensors"))
    tier.objects.write(weights, b"evil" * 1000)  # same size, other bytes
    reader, calls = OptimizedCache(tmp_path / "b"), []
    with caplog.at_level(logging.WARNING):
        assert reader.lookup(KEY) is None
    assert "sha256 differs" in caplog.text and not _local_entry_folders(tmp_path / "b")
    rebuilt = reader.get_or_create(KEY, _writer(b"fine" * 1000, calls))
    assert len(calls) == 1 and rebuilt.file_path("model.safetensors").read_bytes() == b"fine" * 1000
    fresh = OptimizedCache(tmp_path / "c").get_or_create(KEY, _never)
    assert fresh.file_path("model.safetensors").read_bytes() == b"fine" * 1000, "the damaged record was replaced"


# --- a store that is gone ------------------------------------------------------------------------


def test_an_unreachable_tier_falls_back_to_a_local_build_and_keeps_it(tmp_path, monkeypatch, caplog):
    for name, value in tier_env(f"http://127.0.0.1:{closed_port()}").items():
        monkeypatch.setenv(name, value)
    calls, cache = [], OptimizedCache(tmp_path / "a")
    with caplog.at_level(logging.WARNING):
        entry = cache.get_or_create(KEY, _writer(b"w", calls))
    assert len(calls) == 1 and cache.lookup(KEY) == entry
    assert "Could not connect" in caplog.text and "kept in the local cache only" in caplog.text


def test_a_connection_dropped_in_the_middle_of_a_pull_leaves_no_local_entry(tmp_path, monkeypatch, caplog):
    server, endpoint = start_s3_server()
    make_bucket(endpoint)
    for name, value in tier_env(endpoint).items():
        monkeypatch.setenv(name, value)
    OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"w" * 100_000))
    download, copied = shared_tier_module._download, []

    def download_then_drop(objects, pairs):
        download(objects, pairs[:1])  # the first file arrives ...
        copied.append(pairs[0][1].read_bytes())
        server.stop()  # ... then the store goes away
        return download(objects, pairs[1:])

    monkeypatch.setattr(shared_tier_module, "_download", download_then_drop)
    reader = tmp_path / "b"
    with caplog.at_level(logging.WARNING):
        assert OptimizedCache(reader).lookup(KEY) is None
    assert copied == [b"w" * 100_000], "the first file had arrived when the store went away"
    assert "failed to download" in caplog.text
    assert not _local_entry_folders(reader) and not list((reader / ".tmp").iterdir())


# --- build leases --------------------------------------------------------------------------------


def test_two_machines_building_one_key_at_once_build_it_once_even_past_the_lease_ttl(env, tmp_path):
    calls, barrier, entries = [], threading.Barrier(2), {}

    def machine(name):
        barrier.wait()
        # The build outlasts the 1 s lease: only the holder's renewals keep the other one waiting.
        entries[name] = OptimizedCache(tmp_path / name).get_or_create(KEY, _writer(name.encode(), calls, seconds=2.5))

    threads = [threading.Thread(target=machine, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1, f"built {len(calls)} times"
    assert entries["a"].manifest == entries["b"].manifest
    assert not _tier(env).objects.names(_tier(env).objects.path(".leases", "models--org--model",
                                                                   entries["a"].path.name)), "the lease was released"


def test_a_killed_builders_lease_is_taken_over_once_stale(env, tmp_path):
    run = run_worker(tmp_path / "killed", KEY, env, kill_at="commit.tmp_created")  # holding the lease
    assert run.returncode == -signal.SIGKILL, run.stderr
    calls, started = [], time.perf_counter()
    entry = OptimizedCache(tmp_path / "b").get_or_create(KEY, _writer(b"w", calls))
    waited = time.perf_counter() - started
    assert len(calls) == 1 and _tier(env).has(KEY)
    assert 0.9 < waited < 10, f"took over after {waited:.1f} s with a 1 s lease"
    leases = _tier(env).objects.path(".leases", "models--org--model", entry.path.name)
    assert _tier(env).objects.names(leases) == []


def test_a_waiter_takes_the_published_entry_instead_of_building(env, tmp_path):
    tier = _tier(env)
    lease = tier.lease(KEY, ttl=5)
    assert lease.acquire(1, lambda: None) is None and lease.generation == 0
    done = []
    waiter = threading.Thread(target=lambda: done.append(OptimizedCache(tmp_path / "b").get_or_create(KEY, _never)))
    waiter.start()
    time.sleep(0.3)
    built = OptimizedCache(tmp_path / "a", shared=None)
    entry = built._commit_here(KEY, _writer(b"x"))  # the lease holder's build, published by hand
    tier.publish(entry)
    lease.release()
    waiter.join(timeout=20)
    assert done and done[0].manifest == entry.manifest


# --- mirror --------------------------------------------------------------------------------------


def test_the_mirror_planner_skips_an_entry_another_machine_published(env, tmp_path):
    from pdo_hub.mirror import parse_manifest
    from pdo_hub.mirror.plan import MISSING, SKIP, plan_entry

    [entry] = parse_manifest({"models": [{"source": f"hf:org/model@{'a' * 40}"}]}, base=tmp_path).entries
    driver = OptimizedCache(tmp_path / "driver")
    plan = plan_entry(entry, offline=True, cache=driver)
    assert plan.action == MISSING
    OptimizedCache(tmp_path / "worker").commit(plan.key, _writer(b"w"))
    again = plan_entry(entry, offline=True, cache=driver)
    assert again.action == SKIP and driver.lookup(plan.key) is not None


def test_a_missing_bucket_is_a_warning_that_says_how_to_create_it(s3, tmp_path, monkeypatch, caplog):
    for name, value in tier_env(s3).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", "s3://no-such-bucket/prefix")
    with caplog.at_level(logging.WARNING):
        entry = OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"w"))
    assert entry.path.is_dir(), "the build is kept locally"
    assert "'no-such-bucket'" in caplog.text and "does not exist" in caplog.text and "mkdir" in caplog.text


def test_a_reader_killed_while_pulling_leaves_no_local_entry_and_the_next_pull_completes(env, tmp_path):
    built = OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"w" * 1000))
    reader = tmp_path / "reader"
    run = run_worker(reader, KEY, env, kill_at="shared.pulled")  # downloaded and checked, not yet placed
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert not _local_entry_folders(reader) and list((reader / ".tmp").iterdir()), "killed with its temp folder"
    assert OptimizedCache(reader).get_or_create(KEY, _never).manifest == built.manifest
    assert not list((reader / ".tmp").iterdir()), "the killed reader's temp folder was cleared"


def test_a_pulled_entry_counts_against_the_local_size_limit(env, tmp_path, monkeypatch):
    other = CacheKey("huggingface", "org/other", "b" * 40, "1" * 64)
    OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"w" * 1000))
    reader = OptimizedCache(tmp_path / "b")
    with monkeypatch.context() as local_only:
        local_only.delenv("PDO_HUB_SHARED_CACHE")
        reader.commit(other, _writer(b"o" * 1000))
    monkeypatch.setenv("PDO_HUB_CACHE_MAX_SIZE", "1500")
    assert reader.lookup(KEY) is not None
    assert [entry.key for entry in reader.list_entries()] == [KEY], "the older local entry was evicted"


# --- an entry point end to end -------------------------------------------------------------------


def test_from_pretrained_on_a_second_machine_loads_the_first_machines_variant_without_optimizing(
        env, hub_server, tmp_path, monkeypatch, caplog):
    import torch
    from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert

    import pdo_hub

    repo_id = "pdo-test/shared-tier-bert"
    sha = hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "source"), message="tiny bert")
    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "machine-a"))
    built = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    assert built.pdo_cache_status == "built"
    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "machine-b"))
    monkeypatch.setenv("PDO_HUB_TEST_TRACE", str(tmp_path / "trace"))  # every crash point reached, see _crashpoints
    loaded = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    assert loaded.pdo_cache_status == "hit" and loaded.pdo_cache_path.is_relative_to(tmp_path / "machine-b")
    reached = {line.split()[0] for line in (tmp_path / "trace").read_text().splitlines()}
    assert "shared.pulled" in reached and "optimize.start" not in reached, sorted(reached)
    inputs = encode()
    assert torch.equal(hidden(built, inputs), hidden(loaded, inputs))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")  # any tier request would now fail
    with caplog.at_level(logging.WARNING):
        again = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    assert again.pdo_cache_status == "hit" and "shared cache" not in caplog.text, "a local hit makes no tier request"


def test_from_pretrained_that_waits_on_another_machines_lease_reports_a_hit_and_builds_nothing(
        env, hub_server, tmp_path, monkeypatch):
    """The second machine misses the tier, waits on the first one's build lease, then pulls what it published:
    nothing was optimized there, so it is a hit (`pdo-hub mirror` reports it skipped), not a build."""
    from hub_helpers import FAST_CONFIG, save_tiny_bert

    import pdo_hub

    repo_id = "pdo-test/shared-tier-lease-bert"
    sha = hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "source", seed=3), message="tiny bert")
    with monkeypatch.context() as local_only:  # machine a builds without the tier; it publishes by hand below
        local_only.delenv("PDO_HUB_SHARED_CACHE")
        local_only.setenv("PDO_HUB_CACHE", str(tmp_path / "machine-a"))
        first = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    [entry] = OptimizedCache(tmp_path / "machine-a", shared=None).list_entries()
    assert entry.path == first.pdo_cache_path
    tier = _tier(env)
    holder = tier.lease(entry.key, ttl=30)
    assert holder.acquire(1, lambda: None) is None

    def finish_build() -> None:
        time.sleep(3)
        tier.publish(entry)
        holder.release()

    publisher = threading.Thread(target=finish_build)
    publisher.start()
    monkeypatch.setenv("PDO_HUB_SHARED_LEASE_SECONDS", "30")  # the holder is alive: never taken over here
    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "machine-b"))
    monkeypatch.setenv("PDO_HUB_TEST_TRACE", str(tmp_path / "trace"))
    try:
        second = pdo_hub.from_pretrained(repo_id, revision=sha, config=FAST_CONFIG)
    finally:
        publisher.join(timeout=30)
    reached = {line.split()[0] for line in (tmp_path / "trace").read_text().splitlines()}
    assert "lock.acquired" in reached, "the second machine found the entry before waiting: nothing was tested"
    assert "optimize.start" not in reached and "flow.building" not in reached, sorted(reached)
    assert second.pdo_cache_status == "hit"


def test_a_waiter_gives_up_on_a_live_lease_after_the_lock_timeout_naming_the_holder(env, tmp_path, monkeypatch):
    from pdo_hub.core.errors import CacheLockTimeoutError

    holder = _tier(env).lease(KEY, ttl=0.6)
    assert holder.acquire(1, lambda: None) is None  # renewed every 0.2 s by its heartbeat: never stale
    monkeypatch.setenv("PDO_HUB_LOCK_TIMEOUT", "1.5")
    try:
        with pytest.raises(CacheLockTimeoutError, match=r"held by process \d+ on host"):
            OptimizedCache(tmp_path / "b").get_or_create(KEY, _never)
    finally:
        holder.release()


def test_prune_clears_a_killed_publishers_upload_and_lease_but_never_a_published_entry(env, tmp_path, capsys, monkeypatch):
    from pdo_hub.cli import main

    orphan_key = CacheKey("huggingface", "org/other", "b" * 40, "2" * 64)
    assert run_worker(tmp_path / "killed", orphan_key, env, kill_at="shared.objects_uploaded").returncode == -signal.SIGKILL
    OptimizedCache(tmp_path / "a").get_or_create(KEY, _writer(b"kept" * 1000))
    tier = _tier(env)
    orphans, published = _objects(tier, orphan_key), _objects(tier)
    leases = list(tier.objects.find(tier.objects.path(".leases")))
    assert orphans and leases == [tier.objects.path(".leases", "models--org--other", entry_folder_name(orphan_key), "00000000")]

    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "a"))
    assert main(["cache", "prune", "--shared"]) == 0  # all of it is fresh: a live publisher could still be at work
    assert "cleared 0 objects" in capsys.readouterr().out and _objects(tier, orphan_key) == orphans

    assert sorted(tier.prune(older_than=0)) == sorted(orphans + leases)
    assert not _objects(tier, orphan_key) and _objects(tier) == published
    assert not tier.objects.find(tier.objects.path(".leases"))
    pulled = OptimizedCache(tmp_path / "b").lookup(KEY)
    assert pulled is not None and pulled.file_path("model.safetensors").read_bytes() == b"kept" * 1000

    monkeypatch.delenv("PDO_HUB_SHARED_CACHE")
    assert main(["cache", "prune", "--shared"]) == 2
    assert "no shared tier is set; set PDO_HUB_SHARED_CACHE" in capsys.readouterr().err
