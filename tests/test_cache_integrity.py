"""A cache entry is never loaded damaged and never lost: integrity on every hit, quarantine instead of
deletion, clear errors offline and for entries this install cannot use, and clean source records."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import apply_method
from hub_helpers import FAST_CONFIG, save_tiny_bert
from safetensors.torch import save_file
from tiny_models import MLP

import pdo_hub
from pdo_hub.cache import MANIFEST_NAME, CacheKey, OptimizedCache
from pdo_hub.cache import _verified
from pdo_hub.core.errors import DamagedCacheEntryError, IncompatibleCacheEntryError
from pdo_hub.hub import _keys
from pdo_hub.hub.flow import Request, load_or_build
from pdo_hub.hub.local import load_local
from pdo_hub.optimizers import load_optimized, save_optimized
from pdo_hub.optimizers.recipe import FORMAT_NEEDED, RECIPE_VERSION

X = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _entries_look_settled(monkeypatch):
    """Run as if every file were older than the racy-timestamp margin, so hits take the fast path (only
    `stat`, no hashing) that a real cache takes: the damage below must be caught there too."""
    monkeypatch.setattr(_verified, "_now_ns", lambda: time.time_ns() + 10 * _verified.RACY_NS)


def quarantined(root: Path) -> list[Path]:
    return sorted((root / ".quarantine").glob("*/*"))


def output(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(X)


# --- damaged entries of a real local model ---------------------------------------------------------


def _flip_last_byte(path: Path) -> None:  # the end of a safetensors file is tensor data, not its header
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _replace_same_size(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text and len(old) == len(new)
    path.write_text(text.replace(old, new, 1))


DAMAGE = {
    "flipped-weight-byte": lambda entry: _flip_last_byte(entry / "model.safetensors"),
    "truncated-weights": lambda entry: (entry / "model.safetensors").write_bytes(
        (entry / "model.safetensors").read_bytes()[:-64]),
    "edited-recipe": lambda entry: _replace_same_size(entry / "pdo_recipe.json", '"dynamic"', '"Dynamic"'),
    "edited-source-record": lambda entry: _replace_same_size(entry / "pdo_source.json", '"torch"', '"TORCH"'),
}


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "mlp.safetensors"
    save_file(MLP().state_dict(), path)
    return path


def _built_and_hit(weights: Path):
    built = load_local(weights, architecture=MLP, config=FAST_CONFIG)
    hit = load_local(weights, architecture=MLP, config=FAST_CONFIG)  # records the verified file identities
    assert (built.pdo_cache_status, hit.pdo_cache_status) == ("built", "hit")
    return built, Path(hit.pdo_cache_path)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_online_is_quarantined_and_rebuilt_never_loaded(weights, damage, caplog):
    built, entry = _built_and_hit(weights)
    DAMAGE[damage](entry)
    damaged_bytes = {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()}
    with caplog.at_level("WARNING", logger="pdo_hub"):
        again = load_local(weights, architecture=MLP, config=FAST_CONFIG)
    assert again.pdo_cache_status == "built", "a damaged entry was loaded"
    assert torch.equal(output(again), output(built))
    [moved] = quarantined(OptimizedCache().root)
    assert {p.name: p.read_bytes() for p in moved.iterdir() if p.is_file()} == damaged_bytes  # kept as it was
    assert str(entry) in caplog.text and str(moved) in caplog.text  # the warning says what went where


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_offline_raises_and_is_left_untouched(weights, damage):
    _, entry = _built_and_hit(weights)
    DAMAGE[damage](entry)
    before = {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()}
    with pytest.raises(DamagedCacheEntryError) as err:
        load_local(weights, architecture=MLP, config=FAST_CONFIG, local_files_only=True)
    message = str(err.value)
    assert str(entry) in message and "offline" in message and "left untouched" in message
    assert {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()} == before
    assert quarantined(OptimizedCache().root) == []


# --- load failures and entries this install cannot use (load_or_build with a tiny writer) -------------------


KEY = CacheKey("local", "mlp.pt", "ab" * 32, "cd" * 32)


def request(offline: bool) -> Request:
    return Request(key=KEY, what="the test MLP", fetch_hint="build it online", offline=offline,
                   offline_reason="test offline" if offline else "")


class Writer:
    """Writes an optimized MLP (optionally with a method applied and its recipe edited); counts builds."""

    def __init__(self, method: str | None = None, edit_recipe=None) -> None:
        self.method, self.edit_recipe, self.calls = method, edit_recipe, 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        model = MLP().eval()
        if self.method:
            model, _ = apply_method(self.method, model, X)
        save_optimized(model, folder, report={"optimizations_applied": []})
        if self.edit_recipe:
            recipe = json.loads((folder / "pdo_recipe.json").read_text())
            self.edit_recipe(recipe)
            (folder / "pdo_recipe.json").write_text(json.dumps(recipe))


def load(entry):
    return load_optimized(entry.path, MLP(), assign=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != ".pdo_access" and not p.name.startswith(".pdo_verified")}


def test_change_within_the_timestamp_tick_of_its_check_is_still_caught(monkeypatch):
    """Where timestamps are coarse, a file rewritten right after its check keeps its identity: identities
    that fresh are never recorded (git's "racily clean" rule), so the change is hashed and caught."""
    import pdo_hub.cache.manifest as manifest_module

    monkeypatch.setattr(_verified, "_now_ns", time.time_ns)  # the real clock, not the fixture's
    real = _verified.identity

    def one_second_timestamps(path):
        value = real(path)
        return value and value[:3] + (value[3] // 10**9 * 10**9, value[4] // 10**9 * 10**9)

    monkeypatch.setattr(manifest_module, "identity", one_second_timestamps)
    cache = OptimizedCache()
    entry = cache.commit(KEY, Writer())
    assert cache.lookup(KEY, verify=False) == entry
    _flip_last_byte(entry.path / "model.safetensors")  # within the same second, almost always
    assert cache.lookup(KEY, verify=False) is None


def test_load_error_online_is_retried_under_the_lock_then_quarantined_and_rebuilt(caplog):
    cache, write = OptimizedCache(), Writer()
    cache.commit(KEY, write)
    failures = []

    def fails_twice(entry):
        if len(failures) < 2:
            failures.append(entry.path)
            raise RuntimeError("transient failure")
        return load(entry)

    with caplog.at_level("WARNING", logger="pdo_hub"):
        model = load_or_build(request(offline=False), fails_twice, write, cache)
    assert model.pdo_cache_status == "built" and write.calls == 2
    [moved] = quarantined(cache.root)
    assert "transient failure" in caplog.text and str(moved) in caplog.text


def test_load_error_that_passes_on_the_retry_keeps_the_entry():
    cache, write = OptimizedCache(), Writer()
    entry = cache.commit(KEY, write)
    failures = []

    def fails_once(entry):
        if not failures:
            failures.append(entry.path)
            raise OSError("too many open files")
        return load(entry)

    model = load_or_build(request(offline=False), fails_once, write, cache)
    assert model.pdo_cache_status == "hit" and model.pdo_cache_path == entry.path and write.calls == 1
    assert quarantined(cache.root) == []


def test_load_error_offline_raises_and_never_deletes():
    cache, write = OptimizedCache(), Writer()
    entry = cache.commit(KEY, write)
    before = snapshot(entry.path)

    def broken(entry):
        raise RuntimeError("cannot load")

    with pytest.raises(DamagedCacheEntryError, match="cannot load") as err:
        load_or_build(request(offline=True), broken, write, cache)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert snapshot(entry.path) == before and quarantined(cache.root) == []


INCOMPATIBLE = {
    "newer-recipe-format": (lambda recipe: recipe.update(version=RECIPE_VERSION + 1), "newer pdo-hub"),
    "unknown-method": (lambda recipe: recipe.update(records=[{"method": "from_the_future"}]), "'from_the_future'"),
    "record-needs-newer-format": (lambda recipe: recipe.update(records=[{"method": "svd", FORMAT_NEEDED: RECIPE_VERSION + 1}]), "newer pdo-hub"),
}


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_recipe_from_a_newer_pdo_hub_says_upgrade_and_stays_in_place(case, offline):
    edit, expected = INCOMPATIBLE[case]
    cache, write = OptimizedCache(), Writer(edit_recipe=edit)
    entry = cache.commit(KEY, write)
    before = snapshot(entry.path)
    with pytest.raises(IncompatibleCacheEntryError) as err:
        load_or_build(request(offline), load, write, cache)
    assert expected in str(err.value) and "upgrade pdo-hub" in str(err.value) and str(entry.path) in str(err.value)
    assert write.calls == 1, "an entry this install cannot read must not be rebuilt over"
    assert snapshot(entry.path) == before and quarantined(cache.root) == []


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_newer_cache_format_says_upgrade_and_stays_in_place(offline):
    cache, write = OptimizedCache(), Writer()
    entry = cache.commit(KEY, write)
    manifest = json.loads((entry.path / MANIFEST_NAME).read_text())
    manifest["format_version"] += 1
    (entry.path / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = snapshot(entry.path)
    with pytest.raises(IncompatibleCacheEntryError, match="newer pdo-hub.*upgrade pdo-hub"):
        load_or_build(request(offline), load, write, cache)
    assert write.calls == 1 and snapshot(entry.path) == before and quarantined(cache.root) == []


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_missing_optional_package_names_it_and_stays_in_place(offline, monkeypatch):
    pytest.importorskip("optimum.quanto")
    cache, write = OptimizedCache(), Writer(method="quanto_int8")
    entry = cache.commit(KEY, write)
    assert load_or_build(request(offline), load, write, cache).pdo_cache_status == "hit"
    before = snapshot(entry.path)
    for name in [m for m in sys.modules if m == "optimum" or m.startswith("optimum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optimum", None)  # as if optimum-quanto were not installed
    with pytest.raises(IncompatibleCacheEntryError) as err:
        load_or_build(request(offline), load, write, cache)
    assert "optimum-quanto" in str(err.value) and "pip install" in str(err.value)
    assert write.calls == 1 and snapshot(entry.path) == before and quarantined(cache.root) == []


# --- what an entry records about its source --------------------------------------------------------


def test_credentials_never_reach_keys_or_source_records():
    kwargs = {"use_auth_token": "hf_LEGACY", "token": "hf_TOKEN", "hf_password": "pw", "client_secret": "s",
              "pad_token_id": 0, "num_labels": 3}
    assert _keys.canonical_kwargs(kwargs) == {"num_labels": 3, "pad_token_id": 0}
    source = {"kind": "huggingface", "loader": {"library": "transformers", "kwargs": kwargs}}
    assert _keys.public_source(source)["loader"]["kwargs"] == {"num_labels": 3, "pad_token_id": 0}


def test_local_source_record_has_no_absolute_path(weights):
    model = load_local(weights, architecture=MLP, config=FAST_CONFIG)
    entry = Path(model.pdo_cache_path)
    assert json.loads((entry / "pdo_source.json").read_text())["path"] == "mlp.safetensors"
    for path in entry.rglob("*"):
        if path.is_file():
            assert str(weights.parent).encode() not in path.read_bytes(), f"{path.name} holds the local path"


def test_hub_source_with_pdo_hub_file_names_and_credentials_is_cached_cleanly(hub_server, tmp_path):
    folder = save_tiny_bert(tmp_path / "repo")
    (folder / "pdo_manifest.json").write_text('{"not": "pdo-hub\'s"}')  # collides with the entry's own manifest
    (folder / "pdo_recipe.json").write_text('{"not": "a recipe"}')
    repo_id = "pdo-test/tiny-bert-own-names"
    hub_server.store.publish(repo_id, folder, message="a repo with files named like pdo-hub's")
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG, token="hf_SECRET_TOKEN",
                                    use_auth_token="hf_SECRET_LEGACY")
    assert model.pdo_cache_status == "built"
    entry = OptimizedCache().lookup(_key_of(model))
    assert entry is not None and "tokenizer.json" in entry.files
    assert entry.read_json("pdo_recipe.json")["format"] == "pdo-hub-recipe"  # pdo-hub's, not the source's
    assert entry.read_json("pdo_source.json")["loader"]["kwargs"] == {}
    for path in Path(model.pdo_cache_path).rglob("*"):
        if path.is_file():
            assert b"hf_SECRET" not in path.read_bytes(), f"{path.name} holds a credential"


def _key_of(model) -> CacheKey:
    manifest = json.loads((Path(model.pdo_cache_path) / MANIFEST_NAME).read_text())
    return CacheKey.from_dict(manifest["key"])
