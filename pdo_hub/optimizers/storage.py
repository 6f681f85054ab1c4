"""`save_optimized` / `load_optimized`: an optimized model as safetensors + recipe, never pickle.

`model.safetensors` holds every weight as a plain tensor (quantized ones as int8 + scale/zero-point
tensors) and, in its metadata, the recipe and the spec that rebuilds the state dict. `pdo_recipe.json`
beside it is the same recipe for people and tools. Loading builds nothing from the file but tensors:
the caller gives a fresh instance of the original architecture, each record's `restore` rebuilds the
structure, and a strict `load_state_dict` fills it in.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import RecipeError, StorageError
from ..core.tensor_codec import decode_state_dict, encode_state_dict
from .recipe import Recipe
from .registry import get_method

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
RECIPE_NAME = "pdo_recipe.json"
REPORT_NAME = "optimization_report.json"
_RECIPE_KEY = "pdo_recipe"
_SPEC_KEY = "pdo_state_spec"


def get_recipe(model: nn.Module) -> Recipe:
    """The recipe attached to an optimized model (empty for a model pdo-hub did not touch)."""
    recipe = getattr(model, "pdo_recipe", None)
    return recipe if isinstance(recipe, Recipe) else Recipe()


def file_payload(model: nn.Module, recipe: Recipe | None = None) -> tuple[dict, dict[str, str]]:
    """The tensors and string metadata of the model's safetensors file."""
    tensors, spec = encode_state_dict(model.state_dict())
    recipe = recipe or get_recipe(model)
    metadata = {"format": "pt", _RECIPE_KEY: recipe.to_json(), _SPEC_KEY: json.dumps(spec, sort_keys=True)}
    return tensors, metadata


def save_optimized(model: nn.Module, directory: str | os.PathLike, report: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors`, `pdo_recipe.json` (and `optimization_report.json` if given).

    Each file is written to a temp name and renamed, so a reader never sees half a file.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recipe = get_recipe(model)
    tensors, metadata = file_payload(model, recipe)
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _atomic_write(directory / RECIPE_NAME, lambda tmp: Path(tmp).write_text(json.dumps(recipe.to_dict(), indent=2, sort_keys=True)))
    if report is not None:
        _atomic_write(directory / REPORT_NAME, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2, default=str)))
    logger.info("saved optimized model (%d recipe records) to %s", len(recipe.records), directory)
    return directory


def read_recipe(directory: str | os.PathLike) -> Recipe:
    """The recipe embedded in `model.safetensors` (the authoritative copy)."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise StorageError(f"No {WEIGHTS_NAME} in {directory}: save the model with pdo_hub.save_optimized first.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if _RECIPE_KEY not in metadata:
        raise StorageError(f"{path} has no pdo-hub recipe in its metadata: it was not written by pdo_hub.save_optimized.")
    return Recipe.from_json(metadata[_RECIPE_KEY])


def load_optimized(directory: str | os.PathLike, skeleton: nn.Module, *, assign: bool = False) -> nn.Module:
    """Rebuild an optimized model on `skeleton`, a fresh un-optimized instance of the original architecture.

    The skeleton's weights do not matter (it may be randomly initialised); its structure is changed
    in place by replaying the recipe, then every tensor is loaded strictly. With `assign=True` the
    loaded tensors replace the skeleton's instead of being copied into them, so a skeleton built
    without initialising its weights (or on the meta device) loads without a second copy.

    Raises:
        RecipeError: the recipe is from a newer pdo-hub or names a method this install lacks.
        StorageError: the file is missing or damaged, or its tensors do not fit the rebuilt model.
    """
    directory = Path(directory)
    recipe = read_recipe(directory)
    recipe.check_methods()
    model = skeleton
    for record in recipe.records:
        model = get_method(record["method"]).restore(model, record)
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt", device="cpu") as handle:
        spec = json.loads(handle.metadata()[_SPEC_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    state = decode_state_dict(tensors, spec)
    result = model.load_state_dict(state, strict=False, assign=assign)
    if result.missing_keys or result.unexpected_keys:
        raise StorageError(
            f"The weights in {directory} do not fit the rebuilt model: missing keys {result.missing_keys[:10]}, "
            f"unexpected keys {result.unexpected_keys[:10]}. Pass a fresh instance of the architecture the model was optimized from."
        )
    model.eval()
    model.pdo_recipe = recipe
    report_path = directory / REPORT_NAME
    if report_path.is_file():
        model.pdo_report = json.loads(report_path.read_text())
    return model


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["save_optimized", "load_optimized", "read_recipe", "get_recipe", "RecipeError"]
