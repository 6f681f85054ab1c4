"""Registry look-ups, recipe versioning and storage errors: clear failures, nothing lost."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pdo_hub
from pdo_hub import RecipeError, StorageError, UnknownMethodError
from pdo_hub.optimizers import Method, Recipe, get_method, register_method
from pdo_hub.optimizers.recipe import FORMAT_NEEDED, RECIPE_VERSION
from helpers import apply_method
from tiny_models import build, example


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UnknownMethodError) as info:
        get_method("int3")
    assert "int3" in str(info.value) and "dynamic" in str(info.value) and "svd" in str(info.value)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register_method
        class AnotherSVD(Method):  # noqa: F841
            name = "svd"
            kind = "factorization"


def test_quantized_weights_are_plain_int8_tensors_in_the_file(tmp_path):
    optimized, _ = apply_method("dynamic", build("MLP"), example("MLP"), preserve_accuracy_threshold=0.5)
    pdo_hub.save_optimized(optimized, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    int8 = [name for name, t in tensors.items() if t.dtype == torch.int8]
    assert int8, "quantized weights must be stored as int8 tensors"
    assert any(name.endswith(".scale") for name in tensors), "per-channel scales must be stored as tensors"
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        embedded = json.loads(handle.metadata()["pdo_recipe"])
    assert embedded == json.loads((tmp_path / "pdo_recipe.json").read_text())


def _saved_svd(tmp_path):
    optimized, _ = apply_method("svd", build("MLP"), example("MLP"), target_compression_ratio=0.6)
    pdo_hub.save_optimized(optimized, tmp_path)
    return tmp_path


def _rewrite_recipe(directory, change):
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    recipe = json.loads(metadata["pdo_recipe"])
    change(recipe)
    metadata["pdo_recipe"] = json.dumps(recipe)
    save_file(tensors, str(path), metadata=metadata)


def test_recipe_from_a_newer_version_fails_clearly(tmp_path):
    directory = _saved_svd(tmp_path)
    _rewrite_recipe(directory, lambda recipe: recipe.update(version=RECIPE_VERSION + 1))
    with pytest.raises(RecipeError, match="newer than this pdo-hub"):
        pdo_hub.load_optimized(directory, build("MLP"))


def test_record_needing_a_newer_format_fails_clearly_though_the_recipe_says_an_old_one(tmp_path):
    directory = _saved_svd(tmp_path)
    _rewrite_recipe(directory, lambda recipe: recipe["records"][0].update({FORMAT_NEEDED: RECIPE_VERSION + 1}))
    with pytest.raises(RecipeError, match="needs format version .* newer than this pdo-hub"):
        pdo_hub.load_optimized(directory, build("MLP"))


def test_recipe_naming_an_unknown_method_fails_clearly(tmp_path):
    directory = _saved_svd(tmp_path)
    _rewrite_recipe(directory, lambda recipe: recipe["records"][0].update(method="magic"))
    with pytest.raises(RecipeError, match="magic"):
        pdo_hub.load_optimized(directory, build("MLP"))


def test_wrong_skeleton_is_a_clear_error(tmp_path):
    directory = _saved_svd(tmp_path)
    with pytest.raises(RecipeError, match="no submodule"):
        pdo_hub.load_optimized(directory, build("SharedBlock"))


def test_missing_or_foreign_files(tmp_path):
    with pytest.raises(StorageError, match="save_optimized"):
        pdo_hub.load_optimized(tmp_path, build("MLP"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(StorageError, match="no pdo-hub recipe"):
        pdo_hub.load_optimized(tmp_path, build("MLP"))


def test_missing_tensor_is_a_storage_error(tmp_path):
    directory = _saved_svd(tmp_path)
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(StorageError, match="damaged"):
        pdo_hub.load_optimized(directory, build("MLP"))


def test_recipe_json_rejects_garbage():
    with pytest.raises(RecipeError):
        Recipe.from_json("{not json")
    with pytest.raises(RecipeError, match="not a pdo-hub recipe"):
        Recipe.from_dict({"records": []})
