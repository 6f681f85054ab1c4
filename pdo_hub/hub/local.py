"""Local models: transformers save folders, `.safetensors` and `.pt`/`.pth` state dicts.

Keyed by content (sha256 of the file, or of every file of the folder), so editing the file means a new
entry; the source record keeps only the file or folder name (never an absolute path, which would say
where the user keeps files and would be pushed with the entry). State dicts are loaded with `weights_only=True` (never unpickling code) and need the
architecture: a torchvision model name or a callable returning a fresh `nn.Module`.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from pdo_hub.cache import CacheEntry, CacheKey
from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError
from pdo_hub.hub import _keys, examples, skeleton
from pdo_hub.hub._context import bypass
from pdo_hub.hub._files import sha256_of, tree_sha256
from pdo_hub.hub.calibration import Calibration, eval_fn_record, read_calibration
from pdo_hub.hub.flow import Request, copy_source_file, load_or_build, write_entry
from pdo_hub.hub.transformers_models import IGNORE_PATTERNS, SMALL_FILE_PATTERNS, auto_class_named, load_entry, offline_reason
from pdo_hub.optimizers import create_post_download_optimizer, load_optimized

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
Architecture = str | Callable[[], nn.Module]


def load_local(path: str | Path, *, architecture: Architecture | None = None, auto_class: str = "AutoModel",
               config: PostDownloadOptimizationConfig | dict | str | None = None, local_files_only: bool = False,
               verify: bool = False, calibration_data: Any = None,
               eval_fn: Callable[[nn.Module], float] | None = None) -> nn.Module:
    """The optimized model of a local file or folder.

    Args:
        path: A transformers save folder (with `config.json`), or a `.pt`/`.pth`/`.safetensors` state dict.
        architecture: For state dicts: a torchvision model name or a callable returning a fresh model.
        auto_class: For folders: the transformers Auto class to load with.
        config: Optimization config.
        local_files_only: Never optimize: load from the optimized cache or raise.
        verify: Re-hash the entry's files before loading.
        calibration_data: Inputs from your domain to calibrate and judge on: for folders, a text file, a
            list of sentences or tokenized batches; for state dicts, tensor batches (a tensor or a list).
            Without it, folders use the built-in sentences and vision state dicts inputs distilled from
            their BatchNorm statistics. Part of the key.
        eval_fn: Task metric `eval_fn(model) -> accuracy in [0, 1]`; its module, name and code are part of the key.

    Raises:
        ConfigError: unsupported path, or a state dict without `architecture`.
        OfflineCacheMissError: offline and the variant is not cached.
    """
    path = Path(path).expanduser()
    opt_config = load_config(config)
    judging = _Judging(read_calibration(calibration_data), eval_fn)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is a folder without config.json: pass a transformers save folder or a weights file.")
        return _load_folder(path, auto_class, opt_config, local_files_only, verify, judging)
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        if architecture is None:
            raise ConfigError(
                f"{path.name} is a state dict: pass architecture= (a torchvision model name such as 'resnet18', or a "
                "callable returning a fresh nn.Module of the same architecture)."
            )
        return _load_state_dict_file(path, architecture, opt_config, local_files_only, verify, judging)
    raise ConfigError(f"Cannot load {path}: expected a transformers folder or a file ending in {', '.join(STATE_DICT_SUFFIXES)}.")


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict from `.safetensors` or `.pt`/`.pth` (weights_only: tensors and containers, no code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for nested in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, Mapping) and isinstance(state.get(nested), Mapping):
            state = state[nested]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict: save model.state_dict() instead.")
    return state


def _request(key: CacheKey, what: str, hint: str, local_files_only: bool, verify: bool) -> Request:
    reason = offline_reason(local_files_only)
    return Request(key=key, what=what, fetch_hint=hint, offline=reason is not None, offline_reason=reason or "", verify=verify)


def _source_record(key: CacheKey, path: Path, loader: dict, opt_config: PostDownloadOptimizationConfig) -> dict:
    # The name only: an absolute path says where the user keeps files, and would be pushed with the entry.
    return {"kind": "local", "source_id": key.source_id, "revision": key.revision, "path": path.absolute().name,
            "loader": loader, "config_hash": opt_config.config_hash(), "key_hash": key.config_hash}


def _load_folder(path: Path, auto_class: str, opt_config: PostDownloadOptimizationConfig, local_files_only: bool,
                 verify: bool, judging: "_Judging") -> nn.Module:
    auto_cls = auto_class_named(auto_class)
    loader = judging.record({"library": "transformers", "auto_class": auto_class, "kwargs": {}}, "text")
    key = CacheKey("local", _keys.safe_source_name(path.name), tree_sha256(path), _keys.variant_hash(opt_config, loader))
    source = _source_record(key, path, loader, opt_config)
    request = _request(key, f"local folder {path} ({auto_class})", f"load {path} once without offline mode", local_files_only, verify)

    def write(folder: Path) -> None:
        with bypass():
            original = auto_cls.from_pretrained(str(path)).eval()
        inputs = list(judging.calibration.batches) if judging.calibration and judging.calibration.batches else None
        texts = judging.calibration.texts if judging.calibration else None
        try:
            from transformers import AutoTokenizer

            if inputs is None:
                inputs = examples.text_inputs(AutoTokenizer.from_pretrained(str(path)), original, opt_config.calibration_samples, texts)
        except Exception as err:  # no tokenizer saved: the optimizer synthesizes inputs
            if texts:
                raise ConfigError(f"Calibration sentences were given, but {path} has no tokenizer to encode them ({err}).") from err
            logger.info("No tokenizer in %s (%s).", path, err)
        optimized, report = create_post_download_optimizer(opt_config).optimize_model(
            model=original, model_name=path.name, example_inputs=inputs[0] if inputs else None, calibration_data=inputs,
            eval_fn=judging.eval_fn)
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(relative, p) for p in SMALL_FILE_PATTERNS) \
                    and not any(fnmatch.fnmatch(relative, p) for p in IGNORE_PATTERNS):
                copy_source_file(file, folder, relative)
        original.config.save_pretrained(folder)
        write_entry(folder, optimized, report, source)

    return load_or_build(request, load_entry, write)


def _load_state_dict_file(path: Path, architecture: Architecture, opt_config: PostDownloadOptimizationConfig,
                          local_files_only: bool, verify: bool, judging: "_Judging") -> nn.Module:
    make, arch_name, vision = _architecture(architecture)
    loader = judging.record({"library": "torch", "architecture": arch_name}, "batches")
    key = CacheKey("local", _keys.safe_source_name(path.name), sha256_of(path), _keys.variant_hash(opt_config, loader))
    source = _source_record(key, path, loader, opt_config)
    request = _request(key, f"local file {path} ({arch_name})", f"load {path} once without offline mode", local_files_only, verify)

    def write(folder: Path) -> None:
        original = make()
        original.load_state_dict(read_state_dict(path), strict=True)
        original.eval()
        # Without user data, one example: the optimizer distills its calibration inputs from it.
        inputs = list(judging.calibration.batches) if judging.calibration else examples.image_inputs(1) if vision else None
        optimized, report = create_post_download_optimizer(opt_config).optimize_model(
            model=original, model_name=path.stem, example_inputs=inputs[0] if inputs else None,
            calibration_data=inputs if judging.calibration else None, eval_fn=judging.eval_fn)
        write_entry(folder, optimized, report, source)

    def load(entry: CacheEntry) -> nn.Module:
        with skeleton.no_weight_init():
            fresh = make()
        return load_optimized(entry.path, fresh, assign=True)

    return load_or_build(request, load, write)


def _architecture(architecture: Architecture) -> tuple[Callable[[], nn.Module], str, bool]:
    if isinstance(architecture, str):
        import torchvision.models

        try:
            builder = torchvision.models.get_model_builder(architecture)
        except ValueError as err:
            raise ConfigError(f"architecture={architecture!r} is not a torchvision model name; pass a callable instead.") from err

        def make() -> nn.Module:
            with bypass():
                return builder(weights=None)

        return make, f"torchvision:{architecture}", True
    if callable(architecture):
        name = f"{getattr(architecture, '__module__', '?')}.{getattr(architecture, '__qualname__', type(architecture).__name__)}"
        return architecture, name, False
    raise ConfigError(f"architecture={architecture!r}: pass a torchvision model name or a callable returning an nn.Module.")


@dataclass(frozen=True)
class _Judging:
    """The user's calibration data and task metric for one local model."""

    calibration: Calibration | None
    eval_fn: Callable[[nn.Module], float] | None

    def record(self, loader: dict[str, Any], kind: str) -> dict[str, Any]:
        """`loader` with what the key needs to know about them.

        Raises:
            ConfigError: calibration data of a kind this source cannot use.
        """
        if self.calibration is not None:
            usable = ("text", "batches") if kind == "text" else ("batches",)
            if self.calibration.kind not in usable:
                raise ConfigError(
                    f"calibration_data of kind {self.calibration.kind!r} cannot calibrate a local "
                    f"{'transformers folder' if kind == 'text' else 'state dict'}: pass "
                    f"{'a text file, sentences or tokenized batches' if kind == 'text' else 'preprocessed tensor batches'}.")
            loader["calibration"] = self.calibration.describe()
        if self.eval_fn is not None:
            loader["eval_fn"] = eval_fn_record(self.eval_fn)
        return loader
