"""`PostDownloadOptimizationConfig`: the seed's configuration, validated, loadable from YAML, hashable.

Every key of the seed's reference table keeps its name, type and default. The extra keys are what the
real methods need (calibration, benchmarking, device). The canonical form drops what cannot change the
stored model (where files are written) and what a switched-off feature would have used, so that the
same semantics give the same **config hash** in any process and any key order.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .yaml_text import load_yaml

CONFIG_VERSION = 1
YAML_SECTION = "post_download_optimization"

QUANTIZATION_METHODS = ("dynamic", "static", "qat", "fx")
LOW_RANK_METHODS = ("svd", "tucker", "hlrtf")
DEVICES = ("cpu", "cuda", "auto")

# The seed's three modes ship as package data (pdo_hub/presets/*.yaml), so installed wheels find them.
PRESETS_PACKAGE = "pdo_hub.presets"
PRESET_NAMES = ("conservative", "aggressive", "quality")

# Keys that never change which model is stored: left out of the hash.
_NOT_HASHED = ("save_optimized_model", "output_dir")
# Keys added after config version 1 enter the hash only when set away from their default: a config that
# does not use them keeps the hash (and so the cache entries) it had before they existed.
_HASHED_WHEN_SET = {"embedding_bits": 8}
EMBEDDING_BITS = (8, 4)


@dataclasses.dataclass
class PostDownloadOptimizationConfig:
    """What the post-download optimizer does. Defaults are the seed's "conservative" mode.

    Attributes follow the seed's reference table, plus:
        calibration_samples: inputs used to calibrate, evaluate fidelity and drive activation-aware methods.
        benchmark_warmup / benchmark_runs: untimed and timed forward passes per measured model.
        benchmark_threads: torch intra-op threads while benchmarking (results depend on it).
        device: where optimization and benchmarks run (`auto` picks CUDA when available).
        output_dir: where the seed's artifacts go when `save_optimized_model` is on (None: nowhere).
        seed: random seed for everything stochastic (synthesized inputs, fine-tuning).
        recovery_steps / recovery_max_seconds: bounds of the distillation that follows factorization or
            pruning (steps on calibration batches, wall-clock seconds); 0 steps turns recovery off.
        embedding_bits: bits per value of the large embedding tables that int8 quantization stores
            (8: int8 rows; 4: 4-bit rows in groups, 0.62 of the bytes, as the aggressive preset does).
    """

    enable_optimization: bool = True
    enable_quantization: bool = True
    quantization_method: str = "dynamic"
    enable_low_rank_optimization: bool = True
    low_rank_method: str = "svd"
    target_compression_ratio: float = 0.7
    enable_tensor_factorization: bool = True
    preserve_accuracy_threshold: float = 0.02
    enable_structured_pruning: bool = False
    auto_select_best_method: bool = True
    benchmark_optimizations: bool = True
    save_optimized_model: bool = True
    calibration_samples: int = 16
    benchmark_warmup: int = 3
    benchmark_runs: int = 10
    benchmark_threads: int = 2
    device: str = "cpu"
    output_dir: str | None = None
    seed: int = 0
    recovery_steps: int = 100
    recovery_max_seconds: float = 120.0
    embedding_bits: int = 8

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_validated", True)

    def __setattr__(self, name: str, value: Any) -> None:
        # The seed sets keys after construction (`config.quantization_method = "dynamic"`): a bad value or a
        # misspelt key must fail here, naming the key, not deep inside the optimizer. Until __post_init__ has
        # run, the dataclass __init__ is assigning fields one by one and validate() checks them all at once.
        if not self.__dict__.get("_validated", False):
            object.__setattr__(self, name, value)
            return
        if name not in _FIELD_NAMES:
            raise _unknown_key(name)
        previous = self.__dict__[name]
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except ConfigError:
            object.__setattr__(self, name, previous)
            raise

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise `ConfigError` naming the key, the bad value and what is allowed."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _check_type(field.name, value, field.type))
        _check_choice("quantization_method", self.quantization_method, QUANTIZATION_METHODS)
        _check_choice("low_rank_method", self.low_rank_method, LOW_RANK_METHODS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("embedding_bits", self.embedding_bits, EMBEDDING_BITS)
        if not 0.0 < self.target_compression_ratio <= 1.0:
            raise ConfigError(
                f"target_compression_ratio={self.target_compression_ratio!r} is out of range: it is the optimized "
                "size as a fraction of the original, allowed values are in (0, 1] (e.g. 0.7 for 30% smaller)."
            )
        if not 0.0 <= self.preserve_accuracy_threshold < 1.0:
            raise ConfigError(
                f"preserve_accuracy_threshold={self.preserve_accuracy_threshold!r} is out of range: it is the largest "
                "accepted accuracy loss, allowed values are in [0, 1) (e.g. 0.02 for at most 2%)."
            )
        for key, low in (
            ("calibration_samples", 1), ("benchmark_runs", 1), ("benchmark_warmup", 0), ("benchmark_threads", 1), ("recovery_steps", 0),
        ):
            if getattr(self, key) < low:
                raise ConfigError(f"{key}={getattr(self, key)!r} is too small: allowed values are integers >= {low}.")
        if not self.recovery_max_seconds >= 0:  # also NaN
            raise ConfigError(f"recovery_max_seconds={self.recovery_max_seconds!r} is negative: allowed values are numbers >= 0.")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PostDownloadOptimizationConfig":
        """Build from a mapping of keys (or one holding a `post_download_optimization:` section)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"A config must be a mapping of keys to values, got {type(data).__name__}.")
        if YAML_SECTION in data:
            data = data[YAML_SECTION]
            if not isinstance(data, Mapping):
                raise ConfigError(f"The '{YAML_SECTION}' section must be a mapping of keys to values.")
        unknown = [key for key in data if key not in _FIELD_NAMES and key != "version"]
        if unknown:
            raise _unknown_key(unknown[0])
        version = data.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(
                f"version={version!r} is not supported: this pdo-hub reads config version {CONFIG_VERSION}. "
                "Upgrade pdo-hub to read newer configs."
            )
        return cls(**{key: value for key, value in data.items() if key != "version"})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PostDownloadOptimizationConfig":
        """Load from a YAML file with a `post_download_optimization:` section (or bare keys)."""
        return cls._from_yaml_file(Path(path))

    @classmethod
    def _from_yaml_file(cls, path: Path | Traversable) -> "PostDownloadOptimizationConfig":
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"Cannot read config file {path}: {err}.") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"Config file {path} is not valid YAML: {err}") from err
        return cls.from_dict(data or {})

    @classmethod
    def from_preset(cls, name: str) -> "PostDownloadOptimizationConfig":
        """Load one of the seed's modes by name: `conservative`, `aggressive` or `quality`."""
        return cls._from_yaml_file(preset_file(name))

    # -- canonical form -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every key with its value (round-trips through `from_dict`)."""
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    def canonical(self) -> dict[str, Any]:
        """The keys that decide the optimized model, with switched-off features' keys dropped."""
        data = self.to_dict()
        for key in _NOT_HASHED:
            data.pop(key)
        for key, default in _HASHED_WHEN_SET.items():
            if data[key] == default:
                data.pop(key)
        if not self.enable_optimization:
            return {"version": CONFIG_VERSION, "enable_optimization": False}
        if not self.enable_quantization:
            data.pop("quantization_method")
            data.pop("embedding_bits", None)
        if not self.enable_low_rank_optimization:
            data.pop("low_rank_method")
            if not self.enable_structured_pruning:
                data.pop("target_compression_ratio")
                data.pop("enable_tensor_factorization")
                if not (self.enable_quantization and self.quantization_method == "qat"):  # qat trains with the same bounds
                    data.pop("recovery_steps")
                    data.pop("recovery_max_seconds")
        if not self.benchmark_optimizations and not self.auto_select_best_method:
            for key in ("benchmark_warmup", "benchmark_runs", "benchmark_threads"):
                data.pop(key)
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """sha256 hex digest of the canonical JSON: equal for equal semantics, stable across processes."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(PostDownloadOptimizationConfig))


def _unknown_key(key: Any) -> ConfigError:
    hint = difflib.get_close_matches(str(key), _FIELD_NAMES, n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    return ConfigError(f"Unknown config key '{key}'.{suggestion} Allowed keys: {', '.join(_FIELD_NAMES)}.")


def preset_file(name: str) -> Traversable:
    """The packaged YAML file of a preset (a `Traversable`: read it with `.read_text()`).

    Raises:
        ConfigError: when `name` is not one of `PRESET_NAMES`.
    """
    _check_choice("preset", name, PRESET_NAMES)
    return resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")


def load_config(source: "PostDownloadOptimizationConfig | Mapping[str, Any] | str | Path | None" = None) -> PostDownloadOptimizationConfig:
    """Accept a config object, a mapping, a preset name, a YAML path, or None (defaults)."""
    if source is None:
        return PostDownloadOptimizationConfig()
    if isinstance(source, PostDownloadOptimizationConfig):
        return source
    if isinstance(source, Mapping):
        return PostDownloadOptimizationConfig.from_dict(source)
    if isinstance(source, str) and source in PRESET_NAMES:
        return PostDownloadOptimizationConfig.from_preset(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not os.path.isfile(path):  # unlike Path.is_file, False (not OSError) for a name too long to look up
            raise ConfigError(
                f"Config '{source}' is neither a preset ({', '.join(PRESET_NAMES)}) nor an existing YAML file."
            )
        return PostDownloadOptimizationConfig.from_yaml(path)
    raise ConfigError(f"Cannot build a config from {type(source).__name__}: pass a mapping, a preset name or a YAML path.")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    expected = str(annotation)
    if expected == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected true or false.")
    elif expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected an integer.")
    elif expected == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a number.")
        try:
            return float(value)
        except OverflowError as err:  # an int past float range, e.g. 10**400 from YAML
            raise ConfigError(f"{key}={value!r} is out of range: expected a number of float size.") from err
    elif expected == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a string.")
    elif expected == "str | None":
        if value is not None and not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a path string or null.")
        return None if value is None else str(value)
    return value


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported. Allowed values: {', '.join(map(str, allowed))}.")
