"""`pdo-hub cache ls | verify | rm | prune` and automatic eviction, on caches with real entries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import filelock
import pytest
from safetensors.torch import save_file
from tiny_models import MLP

from pdo_hub.cache import STALE_TMP_SECONDS, CacheKey, OptimizedCache
from pdo_hub.cache.layout import ACCESS_STAMP, entry_folder_name
from pdo_hub.cli import main
from pdo_hub.core import constants
from pdo_hub.core.errors import ConfigError
from pdo_hub.core.sizes import format_size, parse_size
from pdo_hub.hub.local import load_local

SHA_A = "a" * 40
SHA_B = "b" * 40
VARIANT = "e" * 64
FAST_CONFIG = {"enable_low_rank_optimization": False, "auto_select_best_method": False,
               "benchmark_optimizations": False, "calibration_samples": 2}


def commit(repo: str, revision: str = SHA_A, variant: str = VARIANT, size: int = 1000, used: float | None = None):
    """An entry shaped like the hub layer's: weights, source record (with the config hash) and report."""
    key = CacheKey("huggingface", repo, revision, variant)
    source = {"kind": "huggingface", "source_id": repo, "revision": revision, "config_hash": "c" * 64, "key_hash": variant}
    report = {"model_name": repo, "optimizations_applied": ["quantization_dynamic"]}

    def writer(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        (folder / "pdo_source.json").write_text(json.dumps(source))
        (folder / "optimization_report.json").write_text(json.dumps(report))

    entry = OptimizedCache().commit(key, writer)
    if used is not None:
        os.utime(entry.path / ACCESS_STAMP, (used, used))
    return entry


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["cache", *argv])
    return code, capsys.readouterr().out


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- ls ------------------------------------------------------------------------------------------


def test_ls_lists_every_entry_as_json_and_as_a_table(capsys):
    commit("org/alpha", size=2048)
    commit("org/beta", revision=SHA_B, size=1024)
    commit("other/gamma")

    code, out = run(capsys, "ls", "--format", "json")
    listing = json.loads(out)
    assert code == 0 and listing["count"] == 3
    assert [e["source_id"] for e in listing["entries"]] == ["org/alpha", "org/beta", "other/gamma"]
    alpha = listing["entries"][0]
    assert alpha["kind"] == "huggingface" and alpha["revision"] == SHA_A
    assert alpha["config_hash"] == "c" * 64 and alpha["variant_hash"] == VARIANT
    assert alpha["methods"] == ["quantization_dynamic"]
    assert alpha["created_at"] and alpha["last_used"]
    assert listing["total_bytes"] == sum(e["size_bytes"] for e in listing["entries"])

    code, out = run(capsys, "ls", "--source", "org/*")
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["source", "revision", "config", "methods"]
    assert "huggingface:org/alpha" in out and "huggingface:org/beta" in out and "gamma" not in out
    assert SHA_A[:12] in out and "c" * 12 in out and "quantization_dynamic" in out
    assert lines[-1].startswith("2 entries, ")


def test_ls_of_an_empty_cache(capsys):
    code, out = run(capsys, "ls")
    assert code == 0 and out.startswith("0 entries, 0 B in ")


def test_ls_and_verify_a_real_entry_built_from_a_local_model(tmp_path, capsys):
    weights = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), weights)
    model = load_local(weights, architecture=MLP, config=FAST_CONFIG)

    listing = json.loads(run(capsys, "ls", "--format", "json", "--kind", "local")[1])
    [entry] = listing["entries"]
    assert entry["methods"] == model.pdo_report["optimizations_applied"] and entry["methods"]
    assert entry["config_hash"] == model.pdo_report["config_hash"]
    assert run(capsys, "verify")[0] == 0

    flip_one_byte(Path(model.pdo_cache_path) / "model.safetensors")
    code, out = run(capsys, "verify")
    assert code == 1 and "model.safetensors: sha256 differs from the manifest" in out


# --- verify --------------------------------------------------------------------------------------


def test_verify_finds_a_same_size_byte_flip_and_never_deletes_by_default(capsys):
    good, bad = commit("org/good"), commit("org/bad")
    assert run(capsys, "verify") == (0, "2 entries checked, 0 damaged\n")

    weights = bad.path / "model.safetensors"
    size = weights.stat().st_size
    flip_one_byte(weights)
    assert weights.stat().st_size == size

    code, out = run(capsys, "verify")
    assert code == 1
    assert f"DAMAGED models--org--bad/entries/{bad.path.name}" in out
    assert "model.safetensors: sha256 differs from the manifest" in out
    assert "org--good" not in out and "2 entries checked, 1 damaged" in out
    assert bad.path.exists() and good.path.exists()

    assert run(capsys, "verify", "--source", "org/good")[0] == 0  # a filter checks only what it selects


def _mixed_up_weights_file(path: Path) -> None:
    """A pdo-hub weights file whose second layer points at the first's int8 values and keeps its own scales:
    what the encoder before b5117f5 could write for FBGEMM-packed convolutions."""
    import torch

    from pdo_hub.core.tensor_codec import encode_state_dict

    def weight(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        scales = torch.rand(8, generator=generator) * 0.01 + 0.005
        return torch.quantize_per_channel(torch.randn(8, 4, generator=generator), scales, torch.zeros(8, dtype=torch.long), 0, torch.qint8)

    tensors, spec = encode_state_dict({"first.weight": weight(0), "second.weight": weight(1)})
    second = spec["entries"]["second.weight"]["quantized"]
    del tensors[second["int_repr"]]
    second["int_repr"] = spec["entries"]["first.weight"]["quantized"]["int_repr"]
    save_file(tensors, str(path), metadata={"format": "pt", "pdo_state_spec": json.dumps(spec)})


def test_verify_reports_an_intact_entry_whose_layer_holds_another_layers_weights(capsys):
    good = commit("org/good")
    key = CacheKey("huggingface", "org/mixed", SHA_A, VARIANT)
    mixed = OptimizedCache().commit(key, lambda folder: _mixed_up_weights_file(folder / "model.safetensors"))
    code, out = run(capsys, "verify")
    assert code == 1 and "2 entries checked, 1 damaged" in out
    assert f"DAMAGED models--org--mixed/entries/{mixed.path.name}" in out
    assert "'second.weight' as a copy of the int8 values of 'first.weight'" in out and "org--good" not in out
    assert mixed.path.exists() and good.path.exists()


def test_verify_quarantine_and_remove(capsys):
    first, second = commit("org/first"), commit("org/second")
    flip_one_byte(first.path / "model.safetensors")
    (second.path / "pdo_manifest.json").write_text("{not json")

    code, out = run(capsys, "verify", "--quarantine", "--source", "org/first")
    assert code == 1 and "quarantined to" in out
    assert not first.path.exists()
    assert len(list((OptimizedCache().root / ".quarantine" / "models--org--first").iterdir())) == 1

    # An unreadable manifest is damage too; the folder names still select it.
    code, out = run(capsys, "verify", "--remove", "--source", "org/second")
    assert code == 1 and "cannot read pdo_manifest.json" in out and "removed" in out
    assert not second.path.exists()
    assert run(capsys, "verify") == (0, "0 entries checked, 0 damaged\n")


# --- rm ------------------------------------------------------------------------------------------


def test_rm_by_pattern_with_dry_run(capsys):
    keep = commit("other/model")
    first, second = commit("org/one"), commit("org/two", revision=SHA_B)

    code, out = run(capsys, "rm", "org/*", "--dry-run")
    assert code == 0 and "would remove huggingface:org/one" in out and "would remove 2 entries" in out
    assert first.path.exists() and second.path.exists()

    code, out = run(capsys, "rm", "org/*")
    assert code == 0 and "removed huggingface:org/two" in out and out.strip().splitlines()[-1].startswith("removed 2 entries")
    assert not first.path.exists() and not second.path.exists() and keep.path.exists()


def test_rm_by_revision_and_config_hash_prefix(capsys):
    old, new = commit("org/model", revision=SHA_A), commit("org/model", revision=SHA_B)
    other_variant = commit("org/model", revision=SHA_B, variant="f" * 64)
    run(capsys, "rm", "--revision", "aaaa")
    assert not old.path.exists() and new.path.exists()
    run(capsys, "rm", "org/model", "--config-hash", "ffff")
    assert not other_variant.path.exists() and new.path.exists()
    run(capsys, "rm", "--config-hash", "cccc")  # the config hash of the source record
    assert not new.path.exists()


def test_rm_without_a_selection_removes_nothing(capsys):
    entry = commit("org/model")
    assert main(["cache", "rm"]) == 2
    assert "Select what to remove" in capsys.readouterr().err
    assert entry.path.exists()


# --- prune ---------------------------------------------------------------------------------------


def test_prune_evicts_least_recently_used_first(capsys):
    now = time.time()
    oldest = commit("org/oldest", size=1000, used=now - 300)
    recent = commit("org/recent", size=1000, used=now - 10)
    middle = commit("org/middle", size=1000, used=now - 100)
    per_entry = oldest.total_bytes
    limit = str(2 * per_entry)

    code, out = run(capsys, "prune", "--max-size", limit, "--dry-run")
    assert code == 0 and "would evict huggingface:org/oldest" in out and "middle" not in out
    assert oldest.path.exists()

    code, out = run(capsys, "prune", "--max-size", limit)
    assert code == 0 and not oldest.path.exists() and middle.path.exists() and recent.path.exists()

    run(capsys, "prune", "--max-size", "1.5K")
    assert not middle.path.exists() and recent.path.exists() and OptimizedCache().size_bytes() <= 1536


def test_prune_clears_stale_temp_folders_trash_and_orphan_locks(capsys):
    root = OptimizedCache().root
    entry = commit("org/model")
    old = time.time() - STALE_TMP_SECONDS - 60
    stale, fresh, trash = root / ".tmp" / "crashed.1", root / ".tmp" / "running.2", root / ".trash" / "gone.3"
    for folder in (stale, fresh, trash):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    os.utime(stale, (old, old))
    locks = root / ".locks" / "models--org--model"
    orphan, held, live = locks / f"{'d' * 40}--{'e' * 16}--v1.lock", locks / f"{'9' * 40}--{'e' * 16}--v1.lock", \
        locks / f"{entry_folder_name(entry.key)}.lock"
    for lock in (orphan, held, live):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
        os.utime(lock, (old, old))

    with filelock.FileLock(held, timeout=0):  # another process building that entry right now
        code, out = run(capsys, "prune", "--dry-run")
        assert code == 0 and "would clear .tmp/crashed.1" in out and stale.exists()
        code, out = run(capsys, "prune")

    assert code == 0 and "cleared .tmp/crashed.1" in out and "cleared .trash/gone.3" in out
    assert not stale.exists() and not trash.exists() and not orphan.exists()
    assert fresh.exists(), "a recent temp folder may belong to a commit still running"
    assert held.exists() and live.exists() and entry.path.exists()


def test_prune_with_a_bad_size_is_a_usage_error(capsys):
    assert main(["cache", "prune", "--max-size", "lots"]) == 2
    assert "--max-size='lots' is not a size" in capsys.readouterr().err


# --- automatic eviction --------------------------------------------------------------------------


def test_cache_max_size_evicts_after_each_commit_but_never_the_new_entry(monkeypatch):
    now = time.time()
    first = commit("org/first", used=now - 200)
    second = commit("org/second", used=now - 100)
    monkeypatch.setenv("PDO_HUB_CACHE_MAX_SIZE", str(2 * first.total_bytes + 100))  # names differ in length
    third = commit("org/third")
    assert not first.path.exists() and second.path.exists() and third.path.exists()

    monkeypatch.setenv("PDO_HUB_CACHE_MAX_SIZE", "10")  # smaller than any entry: only the new one stays
    fourth = commit("org/fourth")
    assert fourth.path.exists() and not second.path.exists() and not third.path.exists()


def test_a_bad_cache_max_size_names_the_variable_before_any_work(monkeypatch):
    monkeypatch.setenv("PDO_HUB_CACHE_MAX_SIZE", "ten gigs")
    called = []
    with pytest.raises(ConfigError, match="PDO_HUB_CACHE_MAX_SIZE"):
        OptimizedCache().commit(CacheKey("huggingface", "org/model", SHA_A, VARIANT), called.append)
    assert called == []


@pytest.mark.parametrize(("text", "size"), [("500MB", 500 * 2**20), ("2GiB", 2 * 2**30), ("1.5G", 3 * 2**29),
                                            ("4096", 4096), ("800k", 800 * 1024), ("1 tb", 2**40), ("0", 0)])
def test_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "5X", "1e9", "5iB", "MB"])
def test_bad_sizes_are_config_errors(text):
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text)


def test_cache_max_size_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("PDO_HUB_CACHE_MAX_SIZE", raising=False)
    assert constants.cache_max_size() is None
    monkeypatch.setenv("PDO_HUB_CACHE_MAX_SIZE", "2GiB")
    assert constants.cache_max_size() == 2 * 2**30
    assert format_size(2 * 2**30) == "2.0 GB"
