"""Tests of the optimized cache (pdo_hub.cache): keys, layout, atomic commit, integrity, locks, eviction."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdo_hub.cache import (
    CACHE_FORMAT_VERSION,
    MANIFEST_NAME,
    STALE_TMP_SECONDS,
    CacheEntry,
    CacheKey,
    OptimizedCache,
    entry_folder_name,
    repo_folder_name,
)
from pdo_hub.cache.layout import holder_path, lock_path
from pdo_hub.cache.locking import describe_holder, read_holder
from pdo_hub.core import constants
from pdo_hub.core.errors import CacheError, CacheLockTimeoutError, ConfigError, InvalidRepoIdError

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA_B = "89abcdef0123456789abcdef0123456789abcdef"
FILE_SHA = "ab" * 32
CONFIG = "c0ffee" + "0" * 58


def hf_key(repo: str = "org/model", revision: str = SHA, config: str = CONFIG) -> CacheKey:
    return CacheKey("huggingface", repo, revision, config)


def write_files(files: dict[str, bytes]):
    """A cache writer that writes `files` (relative name -> bytes)."""

    def writer(folder: Path) -> None:
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    return writer


MODEL_FILES = {
    "model.safetensors": b"\x00\x01weights" * 100,
    "pdo_recipe.json": json.dumps({"records": [{"method": "dynamic"}]}).encode(),
    "tokenizer/vocab.txt": b"hello\nworld\n",
}


def visible_entries(root: Path) -> list[Path]:
    return sorted(root.glob("*/entries/*"))


def leftovers(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).iterdir()) if (root / folder).exists() else []


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "source_id"),
    [
        ("huggingface", "org/model"),
        ("huggingface", "gpt2"),
        ("huggingface", "sentence-transformers/all-MiniLM-L6-v2"),
        ("huggingface", "Org_1/model.v2"),
        ("torchvision", "ResNet18_Weights.IMAGENET1K_V1"),
        ("local", "my_model.pt"),
    ],
)
def test_valid_source_ids(kind, source_id):
    revision = SHA if kind == "huggingface" else FILE_SHA
    key = CacheKey(kind, source_id, revision, CONFIG)
    assert key.format_version == CACHE_FORMAT_VERSION
    assert key.source_id == source_id


@pytest.mark.parametrize(
    ("kind", "source_id"),
    [
        ("huggingface", "../x"),
        ("huggingface", "org/../x"),
        ("huggingface", ".."),
        ("huggingface", "a/b/c"),
        ("huggingface", "/etc/passwd"),
        ("huggingface", "/abs"),
        ("huggingface", ""),
        ("huggingface", "org/"),
        ("huggingface", "/name"),
        ("huggingface", "org//name"),
        ("huggingface", "org\\name"),
        ("huggingface", "C:\\models\\x"),
        ("huggingface", "na\x00me"),
        ("huggingface", "org--a/name"),
        ("huggingface", ".hidden"),
        ("huggingface", "name."),
        ("huggingface", "a" * 97),
        ("huggingface", "has space"),
        ("torchvision", "weights/../../x"),
        ("torchvision", "a/b"),
        ("local", "../../etc/passwd"),
        ("local", "/tmp/model.pt"),
        ("local", ""),
    ],
)
def test_evil_source_ids_are_rejected(kind, source_id):
    revision = SHA if kind == "huggingface" else FILE_SHA
    with pytest.raises(InvalidRepoIdError) as info:
        CacheKey(kind, source_id, revision, CONFIG)
    # The message names the bad value so the user can find it.
    assert repr(source_id) in str(info.value) or repr(source_id)[:20] in str(info.value)


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "0123abc", SHA + "0", SHA[:-1] + "g", FILE_SHA, ""])
def test_branch_or_bad_revision_is_not_a_key(revision):
    with pytest.raises(InvalidRepoIdError, match="revision"):
        hf_key(revision=revision)


def test_file_sources_need_sha256():
    with pytest.raises(InvalidRepoIdError, match="sha256"):
        CacheKey("torchvision", "ResNet18_Weights.IMAGENET1K_V1", SHA, CONFIG)
    with pytest.raises(InvalidRepoIdError, match="sha256"):
        CacheKey("local", "m.pt", "main", CONFIG)


def test_key_other_fields_validated_and_normalized():
    key = hf_key(revision=SHA.upper(), config=CONFIG.upper())
    assert key.revision == SHA and key.config_hash == CONFIG
    assert key == hf_key()
    with pytest.raises(InvalidRepoIdError, match="source kind"):
        CacheKey("s3", "x", SHA, CONFIG)
    for bad in ("abc", "z" * 64, "0" * 200, "../" + "0" * 20):
        with pytest.raises(InvalidRepoIdError, match="config hash"):
            hf_key(config=bad)
    for bad in (0, -1, True, "1"):
        with pytest.raises(InvalidRepoIdError, match="format version"):
            CacheKey("huggingface", "org/model", SHA, CONFIG, bad)
    assert CacheKey.from_dict(key.to_dict()) == key
    with pytest.raises(InvalidRepoIdError):
        CacheKey.from_dict({"kind": "huggingface"})


def test_layout_is_hub_like(tmp_path):
    key = hf_key()
    assert repo_folder_name("huggingface", "org/model") == "models--org--model"
    assert repo_folder_name("huggingface", "gpt2") == "models--gpt2"
    tv_folder = repo_folder_name("torchvision", "ResNet18_Weights.IMAGENET1K_V1")
    assert tv_folder == "torchvision--ResNet18_Weights.IMAGENET1K_V1"
    assert repo_folder_name("local", "m.pt") == "local--m.pt"
    assert entry_folder_name(key) == f"{SHA}--{CONFIG[:16]}--v{CACHE_FORMAT_VERSION}"
    entry = OptimizedCache(tmp_path).commit(key, write_files(MODEL_FILES))
    assert entry.path == tmp_path / "models--org--model" / "entries" / entry_folder_name(key)
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


# --- commit and lookup ---------------------------------------------------------------------------


def test_default_root_is_pdo_hub_cache_env():
    cache = OptimizedCache()
    assert cache.root == Path(os.environ["PDO_HUB_CACHE"])
    entry = cache.commit(hf_key(), write_files(MODEL_FILES))
    assert entry.path.is_relative_to(Path(os.environ["PDO_HUB_CACHE"]))


def test_commit_lookup_round_trip(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    assert cache.lookup(key) is None
    committed = cache.commit(key, write_files(MODEL_FILES))
    found = cache.lookup(key)
    assert isinstance(found, CacheEntry)
    assert found == committed and found.key == key
    assert found.files == tuple(sorted(MODEL_FILES))
    assert found.total_bytes == sum(len(data) for data in MODEL_FILES.values())
    assert found.read_json("pdo_recipe.json") == {"records": [{"method": "dynamic"}]}
    assert found.file_path("tokenizer/vocab.txt").read_bytes() == b"hello\nworld\n"
    manifest = json.loads((found.path / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == CACHE_FORMAT_VERSION
    assert manifest["key"] == key.to_dict()
    assert manifest["created_at"] <= time.time()
    assert manifest["files"]["model.safetensors"]["size"] == len(MODEL_FILES["model.safetensors"])
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    # Nothing is left in the temp area, and other keys are still misses.
    assert leftovers(tmp_path, ".tmp") == []
    assert cache.lookup(hf_key(config="f" * 64)) is None
    assert cache.lookup(hf_key(revision=SHA_B)) is None


def test_entry_refuses_names_outside_its_files(tmp_path):
    entry = OptimizedCache(tmp_path).commit(hf_key(), write_files(MODEL_FILES))
    for name in ("../../CACHEDIR.TAG", MANIFEST_NAME, "missing.json"):
        with pytest.raises(CacheError, match="not a file of cache entry"):
            entry.read_json(name)


def test_writer_exception_leaves_nothing(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    seen = []

    def failing_writer(folder: Path) -> None:
        seen.append(folder)
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("optimizer crashed")

    with pytest.raises(RuntimeError, match="optimizer crashed"):
        cache.commit(key, failing_writer)
    assert seen[0].is_relative_to(tmp_path)  # temp folder on the cache's filesystem
    assert not seen[0].exists()
    assert visible_entries(tmp_path) == []
    assert leftovers(tmp_path, ".tmp") == []
    assert cache.lookup(key) is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "wrote no file"),
        ({MANIFEST_NAME: b"{}"}, "reserved"),
        ({".pdo_access": b""}, "reserved"),
    ],
)
def test_bad_writer_output_is_refused(tmp_path, files, message):
    cache = OptimizedCache(tmp_path)
    with pytest.raises(CacheError, match=message):
        cache.commit(hf_key(), write_files(files))
    assert visible_entries(tmp_path) == [] and leftovers(tmp_path, ".tmp") == []


def test_symlink_in_entry_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")

    def writer(folder: Path) -> None:
        (folder / "model.safetensors").symlink_to(outside)

    with pytest.raises(CacheError, match="symbolic link"):
        OptimizedCache(tmp_path / "cache").commit(hf_key(), writer)
    assert visible_entries(tmp_path / "cache") == []


# --- integrity -----------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: _truncate(entry.path / "model.safetensors"),
        lambda entry: _flip_byte(entry.path / "model.safetensors"),
        lambda entry: (entry.path / "tokenizer" / "vocab.txt").unlink(),
        lambda entry: (entry.path / MANIFEST_NAME).unlink(),
        lambda entry: (entry.path / MANIFEST_NAME).write_text("{not json"),
        lambda entry: (entry.path / MANIFEST_NAME).write_text(
            json.dumps({**entry.manifest, "files": {"../../../etc/passwd": {"size": 1, "sha256": "0" * 64}}})
        ),
    ],
    ids=["truncated", "modified-byte", "missing-file", "missing-manifest", "corrupt-manifest", "unsafe-manifest"],
)
def test_damaged_entry_is_a_miss_left_in_place_then_quarantined_by_the_rebuild(tmp_path, caplog, damage):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    entry = cache.commit(key, write_files(MODEL_FILES))
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="pdo_hub.cache"):
        assert cache.lookup(key) is None
    assert "damaged" in caplog.text
    assert entry.path.exists()  # a lookup without the key's lock never moves anything
    # get_or_create takes the lock, sets the damaged folder aside (never deletes it) and rebuilds.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pdo_hub.cache"):
        rebuilt = cache.get_or_create(key, write_files(MODEL_FILES))
    [moved] = leftovers(tmp_path / ".quarantine", "models--org--model")
    assert moved.name.startswith(entry.path.name) and str(moved) in caplog.text and str(entry.path) in caplog.text
    assert cache.lookup(key) == rebuilt
    assert rebuilt.file_path("model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]


def _as_if_files_were_settled(monkeypatch) -> None:
    """Move the clock past the racy-timestamp margin: files that fresh are hashed on every use, older ones
    only when their identity changed."""
    import pdo_hub.cache._verified as verified_module

    monkeypatch.setattr(verified_module, "_now_ns", lambda: time.time_ns() + 10 * verified_module.RACY_NS)


def _flip_byte_keeping_mtime(path: Path) -> None:
    before = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the edit from size and mtime


def _edit_recipe_same_size(path: Path) -> None:
    path.write_text(path.read_text().replace("dynamic", "static "))  # same size, another method


@pytest.mark.parametrize(
    ("name", "edit"),
    [("model.safetensors", _flip_byte), ("model.safetensors", _flip_byte_keeping_mtime),
     ("pdo_recipe.json", _edit_recipe_same_size)],
    ids=["flipped-byte", "flipped-byte-mtime-restored", "edited-recipe"],
)
def test_same_size_change_is_found_without_verify(tmp_path, monkeypatch, name, edit):
    _as_if_files_were_settled(monkeypatch)  # so the hits below trust recorded identities instead of hashing
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    entry = cache.commit(key, write_files(MODEL_FILES))
    assert cache.lookup(key, verify=False) is not None and (entry.path / ".pdo_verified").is_file()
    edit(entry.path / name)
    # Not a full re-hash: the file's identity (its ctime above all) changed, so it is hashed again.
    assert cache.lookup(key, verify=False) is None


def test_hits_hash_only_files_changed_since_their_last_check(tmp_path, monkeypatch):
    import pdo_hub.cache.manifest as manifest_module

    cache = OptimizedCache(tmp_path)
    key = hf_key()
    entry = cache.commit(key, write_files(MODEL_FILES))
    _as_if_files_were_settled(monkeypatch)
    hashed = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    assert cache.lookup(key, verify=False) == entry
    assert sorted(hashed) == sorted(Path(name).name for name in MODEL_FILES)  # first use: every file
    hashed.clear()
    for _ in range(3):
        assert cache.lookup(key, verify=False) == entry
    assert hashed == []  # later hits only stat them
    time.sleep(0.05)  # a tick later, so rewrites get new timestamps even where they are coarse
    vocab = entry.path / "tokenizer" / "vocab.txt"
    vocab.write_bytes(vocab.read_bytes())  # same bytes, new identity: hashed once, then trusted again
    assert cache.lookup(key, verify=False) == entry and cache.lookup(key, verify=False) == entry
    assert hashed == ["vocab.txt"]
    manifest = entry.path / MANIFEST_NAME
    manifest.write_text(manifest.read_text())  # a rewritten manifest invalidates every recorded check
    hashed.clear()
    assert cache.lookup(key, verify=False) == entry
    assert sorted(hashed) == sorted(Path(name).name for name in MODEL_FILES)
    hashed.clear()
    assert cache.lookup(key, verify=True) == entry and len(hashed) == len(MODEL_FILES)  # verify: every byte


def test_newer_format_manifest_is_a_miss_kept_in_place(tmp_path, caplog):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    entry = cache.commit(key, write_files(MODEL_FILES))
    manifest_path = entry.path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = CACHE_FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="pdo_hub.cache"):
        assert cache.lookup(key) is None
    assert "newer pdo-hub" in caplog.text
    assert entry.path.exists()  # another pdo-hub's entry is not ours to delete
    assert cache.list_entries() == []
    with pytest.raises(CacheError, match="Upgrade pdo-hub"):
        cache.commit(key, write_files(MODEL_FILES))
    assert leftovers(tmp_path, ".tmp") == []


def test_config_hash_prefix_collision_is_a_miss(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key(config=CONFIG)
    twin = hf_key(config=CONFIG[:16] + "f" * 48)  # same folder name, different key
    assert entry_folder_name(key) == entry_folder_name(twin)
    cache.commit(key, write_files(MODEL_FILES))
    assert cache.lookup(twin) is None
    assert cache.lookup(key) is not None  # the other key's entry is left intact


# --- concurrency ---------------------------------------------------------------------------------


def _slow_build(folder: Path, marker: str) -> None:
    with open(marker, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(1.5)
    (folder / "model.safetensors").write_bytes(b"built once" * 50)


def _worker(root: str, marker: str, barrier, results) -> None:
    key = hf_key()
    barrier.wait(timeout=60)
    entry = OptimizedCache(root).get_or_create(key, lambda folder: _slow_build(folder, marker))
    results.put((str(entry.path), entry.manifest["created_at"], entry.manifest["files"]))


def test_two_processes_build_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "cache"
    marker = tmp_path / "builds.txt"
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), str(marker), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"
    builds = marker.read_text().splitlines()
    assert len(builds) == 1, f"the builder ran {len(builds)} times: {builds}"
    assert got[0] == got[1]  # same folder, same manifest (creation time included)
    assert OptimizedCache(root).lookup(hf_key()).path == Path(got[0][0])
    assert leftovers(root, ".tmp") == []


def test_existing_entry_wins_over_second_commit(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    first = cache.commit(key, write_files({"model.safetensors": b"first"}))
    second = cache.commit(key, write_files({"model.safetensors": b"second"}))
    assert second.path == first.path
    assert second.file_path("model.safetensors").read_bytes() == b"first"
    assert leftovers(tmp_path, ".tmp") == []


def test_concurrent_commit_that_lands_first_wins(tmp_path):
    # While this commit's writer runs, another commit of the same key completes: the rename must not
    # overwrite it, and the winner's entry is returned.
    cache = OptimizedCache(tmp_path)
    key = hf_key()

    def slow_writer(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"loser")
        cache.commit(key, write_files({"model.safetensors": b"winner"}))

    entry = cache.commit(key, slow_writer)
    assert entry.file_path("model.safetensors").read_bytes() == b"winner"
    assert cache.lookup(key).file_path("model.safetensors").read_bytes() == b"winner"
    assert leftovers(tmp_path, ".tmp") == []


def test_commit_quarantines_damaged_entry_in_its_way(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    old = cache.commit(key, write_files({"model.safetensors": b"old"}))
    (old.path / "model.safetensors").write_bytes(b"rotten!")
    new = cache.commit(key, write_files({"model.safetensors": b"new"}))
    assert new.file_path("model.safetensors").read_bytes() == b"new"
    assert cache.lookup(key) == new
    [moved] = leftovers(tmp_path / ".quarantine", "models--org--model")
    assert (moved / "model.safetensors").read_bytes() == b"rotten!"  # set aside, not deleted


def test_get_or_create_hits_without_building(tmp_path):
    cache = OptimizedCache(tmp_path)
    key = hf_key()
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        write_files(MODEL_FILES)(folder)

    first = cache.get_or_create(key, build)
    second = cache.get_or_create(key, build)
    assert first == second and len(calls) == 1
    assert (tmp_path / ".locks" / "models--org--model" / f"{entry_folder_name(key)}.lock").exists()


def test_lock_is_a_context_manager_that_records_its_holder(tmp_path):
    cache = OptimizedCache(tmp_path)
    holder = holder_path(lock_path(tmp_path, hf_key()))
    with cache.lock(hf_key()) as held:
        assert held.is_locked
        record = read_holder(holder)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["started"] <= time.time()
    assert not held.is_locked and not holder.exists()


def test_lock_wait_is_bounded_by_default(monkeypatch):
    monkeypatch.delenv("PDO_HUB_LOCK_TIMEOUT", raising=False)
    assert constants.lock_timeout() == 1800
    monkeypatch.setenv("PDO_HUB_LOCK_TIMEOUT", "2.5")
    assert constants.lock_timeout() == 2.5
    monkeypatch.setenv("PDO_HUB_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="PDO_HUB_LOCK_TIMEOUT"):
        constants.lock_timeout()


HOLD_LOCK = r"""
import sys, time
from pdo_hub.cache import CacheKey, OptimizedCache
lock = OptimizedCache(sys.argv[1]).lock(CacheKey("huggingface", "org/model", sys.argv[2], sys.argv[3]))
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder(tmp_path):
    """Another process holding the lock of `hf_key()` in the cache at `tmp_path`."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path), SHA, CONFIG],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_lock_timeout_names_the_holding_process(tmp_path, lock_holder, monkeypatch):
    monkeypatch.setenv("PDO_HUB_LOCK_TIMEOUT", "0.3")
    started = time.monotonic()
    with pytest.raises(CacheLockTimeoutError) as err:
        OptimizedCache(tmp_path).get_or_create(hf_key(), write_files(MODEL_FILES))
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert f"process {lock_holder.pid} on host {socket.gethostname()}" in message
    assert "PDO_HUB_LOCK_TIMEOUT" in message and "stale" not in message
    assert isinstance(err.value, TimeoutError)


def test_lock_of_a_sigkilled_holder_is_free_at_once_and_its_record_reported_stale(tmp_path, lock_holder, caplog):
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait(timeout=30)
    record = read_holder(holder_path(lock_path(tmp_path, hf_key())))
    assert record["pid"] == lock_holder.pid  # a killed holder cannot clean up its record...
    assert "no longer running" in describe_holder(record)  # ...which is then reported as stale
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pdo_hub.cache"):
        entry = OptimizedCache(tmp_path).get_or_create(hf_key(), write_files(MODEL_FILES), lock_timeout=30)
    assert time.monotonic() - started < 2, "the kernel releases the lock of a dead process"
    assert entry.file_path("model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]
    assert f"process {lock_holder.pid}" in caplog.text and "did not finish" in caplog.text


def test_stale_temp_folders_are_cleaned(tmp_path):
    cache = OptimizedCache(tmp_path)
    stale = tmp_path / ".tmp" / "crashed.abc"
    fresh = tmp_path / ".tmp" / "running.def"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    cache.commit(hf_key(), write_files(MODEL_FILES))
    assert not stale.exists()
    assert fresh.exists()  # may belong to a commit still running in another process


# --- refs ----------------------------------------------------------------------------------------


def test_refs_set_and_resolve(tmp_path):
    cache = OptimizedCache(tmp_path)
    assert cache.resolve_ref("huggingface", "org/model", "main") is None
    path = cache.set_ref("huggingface", "org/model", "main", SHA)
    assert path == tmp_path / "models--org--model" / "refs" / "main"
    assert path.read_text() == SHA  # same format as the Hub client cache
    assert cache.resolve_ref("huggingface", "org/model", "main") == SHA
    cache.set_ref("huggingface", "org/model", "main", SHA_B)
    assert cache.resolve_ref("huggingface", "org/model", "main") == SHA_B
    pr = cache.set_ref("huggingface", "org/model", "refs/pr/1", SHA)
    assert pr == tmp_path / "models--org--model" / "refs" / "refs" / "pr" / "1"
    assert cache.resolve_ref("huggingface", "org/model", "refs/pr/1") == SHA
    cache.set_ref("torchvision", "ResNet18_Weights.DEFAULT", "current", FILE_SHA)
    assert cache.resolve_ref("torchvision", "ResNet18_Weights.DEFAULT", "current") == FILE_SHA
    assert cache.resolve_ref("huggingface", "other/model", "main") is None


@pytest.mark.parametrize("ref", ["", "../main", "refs/../../x", "/main", "a//b", ".hidden", "main.lock", "a b", "x/.."])
def test_bad_ref_names_are_rejected(tmp_path, ref):
    cache = OptimizedCache(tmp_path)
    with pytest.raises(InvalidRepoIdError, match="ref name"):
        cache.set_ref("huggingface", "org/model", ref, SHA)
    with pytest.raises(InvalidRepoIdError, match="ref name"):
        cache.resolve_ref("huggingface", "org/model", ref)


def test_ref_must_point_to_a_revision(tmp_path, caplog):
    cache = OptimizedCache(tmp_path)
    with pytest.raises(InvalidRepoIdError, match="revision"):
        cache.set_ref("huggingface", "org/model", "main", "dev")
    with pytest.raises(InvalidRepoIdError):
        cache.set_ref("huggingface", "../evil", "main", SHA)
    path = cache.set_ref("huggingface", "org/model", "main", SHA)
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING, logger="pdo_hub.cache"):
        assert cache.resolve_ref("huggingface", "org/model", "main") is None
    assert "not a revision" in caplog.text


def test_ref_name_and_folder_conflict_is_a_cache_error(tmp_path):
    cache = OptimizedCache(tmp_path)
    cache.set_ref("huggingface", "org/model", "a", SHA)
    with pytest.raises(CacheError, match="Cannot write ref"):
        cache.set_ref("huggingface", "org/model", "a/b", SHA)


# --- listing, removal, eviction -------------------------------------------------------------------


def _blob(size: int) -> dict[str, bytes]:
    return {"model.safetensors": b"x" * size}


def test_list_remove_and_size(tmp_path):
    cache = OptimizedCache(tmp_path)
    keys = [
        hf_key(),
        hf_key(revision=SHA_B),
        CacheKey("torchvision", "ResNet18_Weights.IMAGENET1K_V1", FILE_SHA, CONFIG),
        CacheKey("local", "m.pt", FILE_SHA, CONFIG),
    ]
    for size, key in enumerate(keys, start=1):
        cache.commit(key, write_files(_blob(100 * size)))
    # Junk that is not an entry does not break the listing.
    (tmp_path / "models--org--model" / "entries" / "junk").mkdir()
    listed = cache.list_entries()
    assert len(listed) == 4
    assert {entry.key for entry in listed} == set(keys)
    assert [entry.path for entry in listed] == sorted(entry.path for entry in listed)
    assert cache.size_bytes() == 100 + 200 + 300 + 400
    assert cache.remove(keys[0]) is True
    assert cache.remove(keys[0]) is False
    assert cache.lookup(keys[0]) is None
    assert {entry.key for entry in cache.list_entries()} == set(keys[1:])
    assert cache.size_bytes() == 900
    assert OptimizedCache(tmp_path / "empty").list_entries() == []
    assert OptimizedCache(tmp_path / "empty").size_bytes() == 0


def test_evict_least_recently_used_first(tmp_path):
    cache = OptimizedCache(tmp_path)
    a, b, c = (hf_key(config=ch * 64) for ch in "abc")
    for key in (a, b, c):
        cache.commit(key, write_files(_blob(1000)))
        time.sleep(0.01)
    time.sleep(0.01)
    assert cache.lookup(a) is not None  # a is now the most recently used; b the least
    removed = cache.evict(2500)
    assert [entry.key for entry in removed] == [b]
    assert cache.size_bytes() == 2000
    assert cache.lookup(b) is None
    time.sleep(0.01)
    removed = cache.evict(1000)
    assert [entry.key for entry in removed] == [c]  # c was used before a's lookup above
    assert [entry.key for entry in cache.list_entries()] == [a]
    assert cache.evict(1000) == []
    assert [entry.key for entry in cache.evict(0)] == [a]
    assert visible_entries(tmp_path) == [] and leftovers(tmp_path, ".trash") == []
    with pytest.raises(ConfigError, match="max_bytes"):
        cache.evict(-1)


def test_unwritable_root_is_a_cache_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache root should be")
    with pytest.raises(CacheError, match="PDO_HUB_CACHE"):
        OptimizedCache(blocker).commit(hf_key(), write_files(MODEL_FILES))
    assert OptimizedCache(blocker).lookup(hf_key()) is None
