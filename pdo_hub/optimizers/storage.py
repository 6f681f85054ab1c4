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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from ..core._crashpoints import crashpoint
from ..core.errors import PdoHubError, RecipeError, StorageError
from ..core.tensor_codec import decode_state_dict, encode_state_dict, mixed_up_weights
from ._canonical_safetensors import write_safetensors
from .recipe import Recipe
from .methods import _warm_up
from .registry import get_method

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
RECIPE_NAME = "pdo_recipe.json"
REPORT_NAME = "optimization_report.json"
_RECIPE_KEY = "pdo_recipe"
_SPEC_KEY = "pdo_state_spec"
# What replaying a malformed recipe or loading mismatched tensors raises from inside torch or a method. A
# downloaded recipe can hold any JSON and each `restore` reads its record freely: a missing key or a value
# of the wrong type must fail as a bad recipe or file, not as a traceback from deep inside.
_MALFORMED = (ArithmeticError, AttributeError, LookupError, RuntimeError, TypeError, ValueError)


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
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: write_safetensors(tensors, tmp, metadata))
    crashpoint("storage.weights_written")
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
    metadata = _read_weights(path, tensors=False)[1]
    if _RECIPE_KEY not in metadata:
        raise StorageError(f"{path} has no pdo-hub recipe in its metadata: it was not written by pdo_hub.save_optimized.")
    return Recipe.from_json(metadata[_RECIPE_KEY])


def load_optimized(directory: str | os.PathLike, skeleton: nn.Module, *, assign: bool = False, warm_up: str = "background") -> nn.Module:
    """Rebuild an optimized model on `skeleton`, a fresh un-optimized instance of the original architecture.

    The skeleton's weights do not matter (it may be randomly initialised); its structure is changed
    in place by replaying the recipe, then every tensor is loaded strictly. With `assign=True` the
    loaded tensors replace the skeleton's instead of being copied into them, so a skeleton built
    without initialising its weights (or on the meta device) loads without a second copy.
    `warm_up`: when an int8 variant builds its frozen trace (`methods/_warm_up.py`): on a background
    thread (calls meanwhile run eagerly), `"now"` before returning, or `"off"` (on its first calls).

    Raises:
        RecipeError: the recipe is from a newer pdo-hub or names a method this install lacks.
        StorageError: the file is missing or damaged, or its tensors do not fit the rebuilt model.
    """
    if warm_up not in _warm_up.MODES:
        raise ValueError(f"warm_up must be one of {', '.join(_warm_up.MODES)}, not {warm_up!r}.")
    directory = Path(directory)
    recipe = read_recipe(directory)
    recipe.check_methods()
    model = skeleton
    for index, record in enumerate(recipe.records):
        try:
            model = get_method(record["method"]).restore(model, record)
        except PdoHubError:
            raise
        except _MALFORMED as err:
            raise RecipeError(f"Record {index} ({record['method']}) of the recipe in {directory} cannot be replayed on "
                              f"this model ({type(err).__name__}: {err}): the recipe is damaged or was made for another "
                              "architecture.") from err
    tensors, metadata = _read_weights(directory / WEIGHTS_NAME, tensors=True)
    try:
        spec = json.loads(metadata[_SPEC_KEY])
    except (KeyError, ValueError, RecursionError) as err:
        raise StorageError(f"{directory / WEIGHTS_NAME} has no readable tensor spec in its metadata ({err}).") from err
    state = decode_state_dict(tensors, spec)
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
    except _MALFORMED as err:  # size mismatches, a value in place of a tensor, a missing quantization field
        raise StorageError(f"The weights in {directory} do not fit the rebuilt model: {str(err)[:500]}") from err
    if result.missing_keys or result.unexpected_keys:
        raise StorageError(
            f"The weights in {directory} do not fit the rebuilt model: missing keys {result.missing_keys[:10]}, "
            f"unexpected keys {result.unexpected_keys[:10]}. Pass a fresh instance of the architecture the model was optimized from."
        )
    model.eval()
    _warm_up.start(model, warm_up)  # the frozen trace is built now, not on the first requests
    model.pdo_recipe = recipe
    report_path = directory / REPORT_NAME
    if report_path.is_file():
        try:
            model.pdo_report = json.loads(report_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # also UnicodeDecodeError
            raise StorageError(f"{report_path} is not valid JSON ({err}): the folder is damaged.") from err
    return model


def weights_problem(directory: str | os.PathLike) -> str | None:
    """Why the weights file in `directory` must not be loaded although its bytes are intact: one layer
    holds another's int8 values (`tensor_codec.mixed_up_weights`). None otherwise, also when there is no
    readable pdo-hub weights file (its load says what is wrong). Reads only the tensors it compares."""
    path = Path(directory) / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            spec = json.loads((handle.metadata() or {})[_SPEC_KEY])
            return mixed_up_weights(spec["entries"], _FileTensors(handle))
    except (SafetensorError, OSError, *_MALFORMED):  # not a readable pdo-hub weights file: the load reports it
        return None


class _FileTensors(Mapping):
    """A safetensors file's tensors, each read when first looked up."""

    def __init__(self, handle) -> None:
        self._handle, self._names = handle, set(handle.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._handle.get_tensor(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _read_weights(path: Path, *, tensors: bool) -> tuple[dict, dict[str, str]]:
    """(tensors or {}, metadata) of a safetensors file, or StorageError when it is not one."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return ({name: handle.get_tensor(name) for name in handle.keys()} if tensors else {}), handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise StorageError(f"{path} is not a readable safetensors file ({err}): it is damaged or incomplete.") from err


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        crashpoint("storage.replacing")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["save_optimized", "load_optimized", "read_recipe", "get_recipe", "RecipeError"]
