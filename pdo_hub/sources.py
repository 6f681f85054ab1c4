"""Source specs as the commands take them, and getting their optimized variant through the cache.

A source is written `hf:org/name[@revision]`, `torchvision:name[:weights]`, or a local file or folder
(`local:PATH`, or just the path). A bare `org/name` that is not an existing path means a Hub repo.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from pdo_hub.cache.keys import validate_source_id
from pdo_hub.core.errors import ConfigError, InvalidRepoIdError

SOURCE_KINDS = ("huggingface", "torchvision", "local")
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)?")
_TORCHVISION_NAME = re.compile(r"[a-z][a-z0-9_]*")
_WEIGHTS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class SourceSpec:
    """One source as the user named it.

    Attributes:
        kind: `huggingface`, `torchvision` or `local`.
        id: Hub repo id, torchvision model name, or the local path as given.
        revision: Hub branch, tag or commit (None: `main`).
        weights: torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`, `ResNet18_Weights.IMAGENET1K_V1`).
    """

    kind: str
    id: str
    revision: str | None = None
    weights: str | None = None

    def __str__(self) -> str:
        if self.kind == "huggingface":
            return f"hf:{self.id}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "torchvision":
            return f"torchvision:{self.id}:{self.weights or 'DEFAULT'}"
        return f"local:{self.id}"

    @property
    def short_name(self) -> str:
        """The last part of the id: a name for pushed repos and table rows."""
        if self.kind == "local":
            return Path(self.id).name or "model"
        return self.id.rsplit("/", 1)[-1]


def parse_source(text: str, *, revision: str | None = None) -> SourceSpec:
    """Parse a source spec.

    Args:
        text: `hf:org/name[@revision]`, `torchvision:name[:weights]`, `local:PATH`, a path, or `org/name`.
        revision: A revision given apart from the spec (a manifest's `revision:`); conflicts are errors.

    Raises:
        ConfigError: an empty or malformed spec, or two different revisions.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"Source {text!r} is empty: use hf:org/name, torchvision:name[:weights] or a local path.")
    text = text.strip()
    prefix, _, rest = text.partition(":")
    if prefix in ("hf", "huggingface"):
        return _hub(rest, revision, text)
    if prefix == "torchvision":
        if revision:
            raise ConfigError(f"Source {text!r}: torchvision weights have no revision; name the weights instead (torchvision:name:WEIGHTS).")
        name, _, weights = rest.partition(":")
        if not _TORCHVISION_NAME.fullmatch(name):
            raise ConfigError(f"Source {text!r}: {name!r} is not a torchvision model name (e.g. torchvision:resnet18:DEFAULT).")
        if weights and not _WEIGHTS_NAME.fullmatch(weights):
            raise ConfigError(f"Source {text!r}: {weights!r} is not a weights name (e.g. DEFAULT, IMAGENET1K_V1).")
        return SourceSpec("torchvision", name, weights=weights or "DEFAULT")
    if prefix == "local":
        return _local(rest, text)
    if existing_path(text) is not None:
        return _local(text, text)
    if _HUB_ID.fullmatch(text.partition("@")[0]):
        return _hub(text, revision, text)
    raise ConfigError(
        f"Source {text!r} is neither an existing path nor a source spec: use hf:org/name[@revision], "
        "torchvision:name[:weights] or local:PATH."
    )


def _hub(rest: str, revision: str | None, text: str) -> SourceSpec:
    repo_id, at, pinned = rest.partition("@")
    if not _HUB_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ConfigError(f"Source {text!r}: {repo_id!r} is not a Hub repo id (org/name).")
    try:  # the cache's rules too (part length, first and last characters), so a bad id fails here, named
        validate_source_id("huggingface", repo_id)
    except InvalidRepoIdError as err:
        raise ConfigError(f"Source {text!r}: {err}") from err
    if at and not pinned:
        raise ConfigError(f"Source {text!r}: nothing after '@'; write hf:{repo_id}@main or a commit sha.")
    if pinned and revision and pinned != revision:
        raise ConfigError(f"Source {text!r} pins revision {pinned!r} but revision: {revision!r} was also given.")
    return SourceSpec("huggingface", repo_id, revision=pinned or revision)


def _local(path: str, text: str) -> SourceSpec:
    found = existing_path(path) if path else None
    if found is None:
        raise ConfigError(f"Source {text!r}: the local path {path!r} does not exist.")
    return SourceSpec("local", str(found))


def existing_path(text: str) -> Path | None:
    """The path `text` names, `~` expanded, when it exists, else None.

    Also None where `Path.exists`/`Path.expanduser` would raise: a name too long for the file system, a NUL
    byte, `~user` of an unknown user.
    """
    try:
        path = os.path.expanduser(text)
        return Path(path) if os.path.exists(path) else None
    except ValueError:  # expanduser looking up "~user" with a NUL in the user name
        return None


def optimize_source(spec: SourceSpec, *, config: Any = None, calibration: Any = None, auto_class: str = "AutoModel",
                    architecture: str | None = None, local_files_only: bool = False, token: str | None = None,
                    cache_dir: str | None = None) -> nn.Module:
    """The optimized variant of `spec`: a cache hit, or fetched, optimized and committed once.

    Args:
        spec: The source.
        config: Optimization config (object, mapping, preset name or YAML path).
        calibration: A text file / list of sentences (text models) or a folder of images (vision models).
        auto_class: transformers Auto class for Hub repos and local transformers folders.
        architecture: torchvision model name for a local state-dict file.
        local_files_only: No network: the cache or `OfflineCacheMissError`.
        token: Hub token (downloads only, never stored).
        cache_dir: Hub client cache for originals.

    Returns:
        The model, with `.pdo_report`, `.pdo_cache_path` and `.pdo_cache_status` (`hit` or `built`).
    """
    from pdo_hub import hub

    if spec.kind == "huggingface":
        return hub.from_pretrained(spec.id, revision=spec.revision, config=config, auto_class=auto_class,
                                   calibration=calibration, local_files_only=local_files_only, token=token,
                                   cache_dir=cache_dir)
    if spec.kind == "torchvision":
        return hub.get_model(spec.id, weights=spec.weights or "DEFAULT", config=config, calibration=calibration,
                             local_files_only=local_files_only)
    if calibration is not None:
        raise ConfigError("--calibration is supported for hf: and torchvision: sources; local sources use built-in inputs.")
    return hub.load_local(spec.id, architecture=architecture, auto_class=auto_class, config=config,
                          local_files_only=local_files_only)
