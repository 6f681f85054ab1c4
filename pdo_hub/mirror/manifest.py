"""The mirror manifest: which models to keep optimized, with which config, as a YAML file.

```yaml
defaults: {preset: conservative}
models:
  - source: hf:sentence-transformers/all-MiniLM-L6-v2
    revision: main
  - source: torchvision:resnet18:DEFAULT
    preset: aggressive
```

Per model (and in `defaults`): `preset` (a built-in preset), `config` (a YAML file, relative to the manifest,
or inline keys that override the preset), `auto_class`, `calibration` (a text file or image folder,
relative to the manifest), `optimize` (false: only mirror the original), `push` (the repo id to push
this variant to; `--push ORG` names it `ORG/<name>-pdo-<preset or config hash>`), `push_format` (`pdo`,
the default; `transformers`: the torchao form stock transformers loads; `onnx`: ONNX Runtime files with a
parity report, calibrated with `calibration` when it is a text file; see `pdo_hub.push`). Unknown
keys are errors that name the key and the allowed ones.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pdo_hub.core.config import PRESET_NAMES, PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError
from pdo_hub.core.yaml_text import load_yaml
from pdo_hub.sources import SourceSpec, existing_path, parse_source

_SETTINGS = ("preset", "config", "auto_class", "calibration", "optimize", "push", "push_format", "architecture")
_PUSH_FORMATS = ("pdo", "transformers", "onnx")  # pdo_hub.push.FORMATS (not imported: it pulls in the Hub client)
_MODEL_KEYS = ("source", "revision", *_SETTINGS)


@dataclass(frozen=True)
class MirrorEntry:
    """One model of the manifest with its settings resolved (defaults applied, paths made absolute).

    Attributes:
        source: What to mirror.
        config: The optimization config.
        config_label: How the config was named (`conservative`, `conservative+2 keys`, a file name).
        auto_class: transformers Auto class for Hub repos.
        calibration: Calibration file or folder, or None.
        optimize: False mirrors the original only.
        push: Repo id to push the variant to, or None.
        push_format: What to push: `pdo` (pdo-hub's files), `transformers` (torchao int8 for stock transformers)
            or `onnx` (ONNX Runtime files).
        architecture: torchvision model name for a local state-dict file.
    """

    source: SourceSpec
    config: PostDownloadOptimizationConfig
    config_label: str
    auto_class: str = "AutoModel"
    calibration: Path | None = None
    optimize: bool = True
    push: str | None = None
    architecture: str | None = None
    push_format: str = "pdo"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest."""

    path: Path
    entries: tuple[MirrorEntry, ...] = field(default_factory=tuple)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown keys, bad values (each names the model and key).
    """
    path = Path(path).expanduser()
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read the mirror manifest {path}: {err}.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Mirror manifest {path} is not valid YAML: {err}") from err
    return parse_manifest(data, base=path.parent, name=str(path))


def parse_manifest(data: Any, *, base: Path, name: str = "manifest") -> Manifest:
    """Validate manifest data (the YAML document) and resolve every entry."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: the manifest must be a mapping with a 'models:' list.")
    _check_keys(data, ("defaults", "models"), f"{name}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{name}: 'defaults' must be a mapping of settings.")
    _check_keys(defaults, _SETTINGS, f"{name}: defaults")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{name}: 'models' must be a non-empty list of {{source: ...}} entries.")
    entries = []
    for index, item in enumerate(models):
        where = f"{name}: models[{index}]"
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, Mapping) or "source" not in item:
            raise ConfigError(f"{where} must be a mapping with a 'source:' key (e.g. source: hf:org/name).")
        _check_keys(item, _MODEL_KEYS, where)
        entries.append(_entry({**defaults, **item}, base, where))
    seen: dict[tuple, str] = {}
    for entry in entries:
        ident = (str(entry.source), entry.config.config_hash(), entry.auto_class, entry.calibration)
        if ident in seen:
            raise ConfigError(f"{name}: {entry.source} with config {entry.config_label} is listed twice.")
        seen[ident] = entry.config_label
    return Manifest(Path(name), tuple(entries))


def _entry(settings: Mapping[str, Any], base: Path, where: str) -> MirrorEntry:
    try:
        revision = settings.get("revision")
        if revision is not None and not isinstance(revision, str):
            revision = str(revision)  # YAML reads an all-digit sha prefix or a version tag as a number
        source = parse_source(_string(settings["source"], "source", where), revision=revision)
        config, label = _config(settings, base, where)
        calibration = settings.get("calibration")
        optimize = settings.get("optimize", True)
        if not isinstance(optimize, bool):
            raise ConfigError(f"{where}: optimize must be true or false, got {optimize!r}.")
        push = settings.get("push")
        push_format = settings.get("push_format", "pdo")
        if push_format not in _PUSH_FORMATS:
            raise ConfigError(f"{where}: push_format must be one of {list(_PUSH_FORMATS)}, got {push_format!r}.")
        return MirrorEntry(
            source=source, config=config, config_label=label,
            auto_class=_string(settings.get("auto_class", "AutoModel"), "auto_class", where),
            calibration=_path(calibration, base, "calibration", where) if calibration is not None else None,
            optimize=optimize, push=_string(push, "push", where) if push is not None else None,
            architecture=_string(settings["architecture"], "architecture", where) if settings.get("architecture") else None,
            push_format=push_format,
        )
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from err


def _config(settings: Mapping[str, Any], base: Path, where: str) -> tuple[PostDownloadOptimizationConfig, str]:
    preset, config = settings.get("preset"), settings.get("config")
    if preset is not None and preset not in PRESET_NAMES:
        raise ConfigError(f"{where}: preset {preset!r} is not one of {', '.join(PRESET_NAMES)}.")
    if isinstance(config, str):
        if preset is not None:
            raise ConfigError(f"{where}: give either preset: or a config file, not both (inline config keys may refine a preset).")
        if config in PRESET_NAMES:
            return load_config(config), config
        return load_config(_path(config, base, "config", where)), Path(config).name
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"{where}: config must be a YAML file name or a mapping of config keys.")
    start = load_config(preset).to_dict() if preset else {}
    overrides = dict(config or {})
    label = preset or "default"
    if overrides:
        label += f"+{len(overrides)} key{'s' if len(overrides) > 1 else ''}"
    return PostDownloadOptimizationConfig.from_dict({**start, **overrides}), label


def _path(value: Any, base: Path, key: str, where: str) -> Path:
    text = _string(value, key, where)
    path = existing_path(text if text.startswith("~") else os.path.join(base, text))  # join keeps an absolute text
    if path is None:
        raise ConfigError(f"{where}: {key} {str(value)!r} does not exist (paths are relative to the manifest).")
    return path


def _string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}.")
    return value.strip()


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{where}: unknown key '{key}'.{suggestion} Allowed keys: {', '.join(allowed)}.")
