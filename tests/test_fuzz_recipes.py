"""Hostile recipes, tensor specs and reports in a `model.safetensors` folder (as a downloaded variant may hold):
`load_optimized` gives a model or a pdo-hub error, never a traceback from inside a method, never a layer sized
by a number in the file, and never imports anything the file names."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
import torch.nn as nn
from fuzz_support import canary_module, fuzz_settings, json_values, mapping_like, mostly, nasty_text, result_or_refusal
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import save_file

from pdo_hub.core.errors import PdoHubError, StorageError
from pdo_hub.core.tensor_codec import encode_state_dict
from pdo_hub.optimizers import load_optimized
from pdo_hub.optimizers.recipe import RECIPE_FORMAT, Recipe
from pdo_hub.optimizers.registry import get_method
from pdo_hub.optimizers.storage import RECIPE_NAME, REPORT_NAME, WEIGHTS_NAME, file_payload

CANARY = "pdo_hub_fuzz_canary"  # a module that exists on sys.path: importing it would be detected


class Tiny(nn.Module):
    """One layer of each kind the methods rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.fc = nn.Linear(4, 4)
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.fixture(scope="module", autouse=True)
def canary(tmp_path_factory):
    with canary_module(tmp_path_factory.mktemp("canary"), CANARY):
        yield


LAYERS = ["fc", "conv", "embed", "bn"]
paths = mostly(st.sampled_from(LAYERS), st.one_of(nasty_text, st.sampled_from(
    ["", "missing", "fc.weight", "conv.__class__", "__class__", "_modules", CANARY, f"{CANARY}.x", "os.system"])))
path_lists = mostly(st.lists(paths, max_size=3))
words = st.sampled_from(["Linear", "Conv2d", "Embedding", "BatchNorm2d", "LSTM", CANARY, "torch.nn.Linear"])
sizes = mostly(st.integers(min_value=-1, max_value=9), st.sampled_from([10**9, 10**12, 2**63, 1e300, 2.0, -0.0, "3"]))
channels = mostly(st.one_of(st.none(), st.lists(st.integers(min_value=-1, max_value=9), max_size=6, unique=True)),
                  st.one_of(st.just([0] * 10_000), st.lists(st.integers(min_value=0, max_value=3), max_size=6)))
input_specs = mostly(st.lists(st.fixed_dictionaries({
    "shape": mostly(st.lists(sizes, max_size=4)),
    "dtype": mostly(st.sampled_from(["float32", "int64"]), st.sampled_from(["complex", CANARY]))}), max_size=2))
folded = mostly(st.lists(st.tuples(paths, paths).map(list), max_size=2))  # [[conv, norm], ...]


def record(method: str, **fields: st.SearchStrategy) -> st.SearchStrategy[dict]:
    """A record of `method` with the fields of its real format (each one junk now and then) and maybe a junk key."""
    return st.fixed_dictionaries({"method": st.just(method), **fields}, optional={"extra": json_values})


records = st.one_of(
    record("svd", module=paths, layer=mostly(words), rank=sizes, head_rows=sizes, folded_norms=folded),
    record("tucker", form=mostly(st.sampled_from(["tucker", "svd"])), module=paths, layer=mostly(words),
           rank_in=sizes, rank_out=sizes, rank=sizes, folded_norms=folded),
    record("hlrtf", form=mostly(st.sampled_from(["hlrtf", "svd"])), module=paths, layer=mostly(words), slices=sizes,
           rank=sizes),
    record("prune", modules=mostly(st.dictionaries(paths, mostly(st.fixed_dictionaries(
        {"type": mostly(words), "out": channels, "in": channels})), max_size=2)), folded_norms=folded),
    record("dynamic", modules=mostly(st.dictionaries(paths, mostly(words), max_size=2)),
           schemes=mostly(st.dictionaries(paths, st.sampled_from(["precise", "fast", "stock", "new"]))),
           embeddings=path_lists),
    record("static", flow=mostly(st.sampled_from(["eager", "static"])), layers=path_lists, embeddings=path_lists,
           backend=mostly(st.just("x86")), inputs=input_specs, float_layers=path_lists),
    record("fx", backend=mostly(st.just("x86")), inputs=input_specs, float_layers=path_lists, flow=st.just("fx")),
    record("qat", backend=mostly(st.just("x86")), inputs=input_specs, float_layers=path_lists, flow=st.just("qat")),
    record("quanto_int8", weights=mostly(st.just("qint8")), modules=path_lists),
    st.builds(lambda method, fields: {**fields, "method": method},
              st.one_of(nasty_text, st.sampled_from([CANARY, f"{CANARY}:Method", "__class__"])),
              st.dictionaries(nasty_text, json_values, max_size=3)),
)
recipes = mostly(
    st.builds(lambda rs: {"format": RECIPE_FORMAT, "version": 1, "records": rs}, st.lists(records, max_size=2)),
    st.one_of(mapping_like(["format", "version", "records"]), json_values),
)


def _replayed_state(recipe: object) -> dict[str, torch.Tensor]:
    """The state dict the recipe's structure would have, when it replays at all, so that the fuzzed load also
    reaches the tensor load; the plain skeleton's otherwise."""
    model: nn.Module = Tiny()
    try:
        for record in Recipe.from_dict(recipe).records:
            model = get_method(record["method"]).restore(model, copy.deepcopy(record))
        encode_state_dict(model.state_dict())  # a structure no real recipe makes may hold what safetensors cannot
    except Exception:  # noqa: BLE001 - any failure here is the loader's to report, not this helper's
        model = Tiny()
    return model.state_dict()


def _write(folder, recipe_text: str, *, state=None, spec_text: str | None = None, report: str | None = None) -> None:
    folder.mkdir(exist_ok=True)
    tensors, metadata = file_payload(_Holder(state) if state is not None else Tiny(), Recipe())
    metadata["pdo_recipe"] = recipe_text
    if spec_text is not None:
        metadata["pdo_state_spec"] = spec_text
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata=metadata)
    (folder / RECIPE_NAME).write_text(recipe_text, errors="surrogatepass")
    if report is not None:
        (folder / REPORT_NAME).write_text(report, errors="surrogatepass")


class _Holder(nn.Module):
    """Anything with a `state_dict()`: lets `file_payload` encode a state dict of any structure."""

    def __init__(self, state) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):  # noqa: ARG002
        return self._state


def _load(folder) -> PdoHubError | None:
    """Load the variant: the refusal (a pdo-hub error with a message), or None when it loaded as a model."""
    model, refusal = result_or_refusal(load_optimized, folder, Tiny(), refusal=PdoHubError)
    assert refusal is not None or isinstance(model, nn.Module)
    return refusal


@fuzz_settings(2)
@given(recipes)
@example({"format": RECIPE_FORMAT, "version": 1, "records": [{"method": "svd", "module": "fc", "layer": "Linear",
                                                              "rank": 10**9}]})  # a 10**9-wide layer, unless refused
@example({"format": RECIPE_FORMAT, "version": 1, "records": [{"method": "prune", "modules": {
    "fc": {"type": "Linear", "out": [0] * 100_000, "in": None}}}]})  # repeated channels would grow the layer
@example({"format": RECIPE_FORMAT, "version": 1, "records": [{"method": "fx", "backend": "x86", "inputs": [
    {"shape": [10**5, 10**5], "dtype": "float32"}]}]})  # 40 GB of zeros to trace with, unless refused
@example({"format": RECIPE_FORMAT, "version": 1, "records": [{"method": f"{CANARY}:Method"}]})
def test_hostile_recipes_load_or_raise_pdo_hub_errors(tmp_path, recipe):
    text = json.dumps(recipe)
    _write(tmp_path / "variant", text, state=_replayed_state(recipe))
    _load(tmp_path / "variant")
    assert CANARY not in sys.modules


@fuzz_settings(0.5)
@given(st.one_of(nasty_text, st.just("[" * 5000), st.just('{"format": "pdo-hub-recipe", "version": 1e999}')))
def test_recipe_text_that_is_not_json_raises_a_pdo_hub_error(tmp_path, text):
    try:
        _write(tmp_path / "variant", text)
    except UnicodeEncodeError:  # a lone surrogate: safetensors metadata must be valid UTF-8
        return
    _load(tmp_path / "variant")


@fuzz_settings()
@given(st.one_of(json_values.map(json.dumps), nasty_text, st.just("[" * 5000),
                 mapping_like(["entries", "module_versions"]).map(json.dumps),
                 st.dictionaries(st.sampled_from(list(Tiny().state_dict())), json_values).map(
                     lambda entries: json.dumps({"entries": entries}))))
def test_hostile_tensor_specs_raise_storage_errors(tmp_path, spec):
    try:
        _write(tmp_path / "variant", Recipe().to_json(), spec_text=spec)
    except UnicodeEncodeError:
        return
    refusal = _load(tmp_path / "variant")
    assert refusal is None or isinstance(refusal, StorageError), f"{type(refusal).__name__}: {refusal}"


@fuzz_settings(0.3)
@given(st.one_of(st.binary(max_size=64), st.just(b"\x08" + b"\x00" * 7 + b"{\"a\":1}")))
def test_files_that_are_not_safetensors_raise_storage_errors(tmp_path, data):
    folder = tmp_path / "variant"
    folder.mkdir(exist_ok=True)
    (folder / WEIGHTS_NAME).write_bytes(data)
    assert isinstance(_load(folder), StorageError), "bytes that are not a safetensors file must be refused"


@pytest.mark.parametrize("report", ["{not json", "\udcff", "[" * 5000])
def test_a_damaged_report_beside_the_weights_raises_a_storage_error(tmp_path, report):
    _write(tmp_path / "variant", Recipe().to_json(), report=report)
    _load(tmp_path / "variant")


@fuzz_settings(0.5)
@given(st.one_of(recipes.map(json.dumps), nasty_text, st.just("[" * 5000)))
def test_a_hostile_pdo_recipe_json_is_judged_or_refused_with_a_pdo_hub_error(tmp_path, text):
    """The flow reads `pdo_recipe.json` of an intact entry to tell "needs a newer pdo-hub" from damage."""
    from pdo_hub.cache import CacheEntry, CacheKey
    from pdo_hub.hub._entry_checks import incompatibility

    (tmp_path / RECIPE_NAME).write_text(text, errors="surrogatepass")
    entry = CacheEntry(CacheKey("huggingface", "org/model", "a" * 40, "0" * 64), tmp_path, {"files": {RECIPE_NAME: {}}})
    try:
        verdict = incompatibility(entry)
    except PdoHubError:
        return
    assert verdict is None or isinstance(verdict, str)
