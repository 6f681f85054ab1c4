"""What goes into a cache key beyond the source: the variant hash, canonical loader arguments, ids.

The same weights optimized for another head (`AutoModel` vs `AutoModelForSequenceClassification`),
with other loader arguments (`num_labels=3`, `dtype`), or calibrated on other inputs are different
models, so they must be different entries. The cache key's hash is therefore the sha256 of the config
hash together with those facts (the "variant hash"); the config hash itself is kept in the entry's
source record and model card.

Loader arguments that carry credentials (`token`, the legacy `use_auth_token`, anything named like a
token, auth, password or secret) never change the built model: they are left out of keys and records,
so no secret is ever hashed into a key or written into an entry (and pushed with it).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.core.errors import ConfigError

#: Branch prefix under which `pdo-hub serve` offers each variant of a repo (`pdo-<variant hash[:16]>`).
VARIANT_BRANCH_PREFIX = "pdo-"
_BRANCH_HASH_CHARS = 16
#: The field of a pdo-hub server's model_info answer listing a repo's variant branches ({branch: commit sha}).
VARIANTS_FIELD = "pdoVariants"

#: Bump when the calibration inputs pdo-hub synthesizes change: the optimized weights depend on them.
# v2: vision inputs distilled from BatchNorm statistics (ZeroQ), not noise; v3: twice as many built-in
# texts for text models, passages beside sentences, checked against the tokenizer's vocabulary; v4: text
# calibration inputs without padding (only the first, the benchmark example, padded to 128 tokens);
# v5: the built-in texts' two calibration folds share no sentence (prune fits on one, judges on the other).
INPUTS_VERSION = "inputs-v5"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SECRET_WORDS = ("token", "auth", "password", "passwd", "secret", "credential", "api_key", "apikey")
# Names about tokens that are model settings, not credentials (`pad_token_id=0` changes the config).
_NOT_SECRET_SUFFIXES = ("_id", "_ids")


def variant_branch(variant_hash_hex: str) -> str:
    """The branch that names one variant on a pdo-hub server: `pdo-<first 16 hex of the variant hash>`."""
    return VARIANT_BRANCH_PREFIX + variant_hash_hex[:_BRANCH_HASH_CHARS]


def variant_hash(config: PostDownloadOptimizationConfig, loader: Mapping[str, Any]) -> str:
    """sha256 of the config hash plus the loader facts that change the stored model.

    Args:
        config: The optimization config.
        loader: JSON-able description of how the original is built (class, arguments, inputs).
    """
    payload = {"config_hash": config.config_hash(), "loader": dict(loader), "inputs": INPUTS_VERSION}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON form of loader keyword arguments, so they can be part of a key; credentials are left out.

    Raises:
        ConfigError: for a value that has no stable JSON form (the key would not be reproducible).
    """
    return {name: _canonical(name, value) for name, value in sorted(public_kwargs(kwargs).items())}


def is_secret_name(name: str) -> bool:
    """True for an argument name that may carry a credential (`token`, `use_auth_token`, `hf_password`)."""
    lowered = str(name).lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(_NOT_SECRET_SUFFIXES)


def public_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` without the arguments that may carry credentials (see `is_secret_name`)."""
    return {name: value for name, value in kwargs.items() if not is_secret_name(name)}


def public_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A source record safe to write into an entry: loader arguments that may carry credentials removed.

    The callers build the loader with `canonical_kwargs` already; this is the last gate before the disk,
    whatever the caller.
    """
    record = dict(source)
    loader = record.get("loader")
    if isinstance(loader, Mapping) and isinstance(loader.get("kwargs"), Mapping):
        record["loader"] = {**loader, "kwargs": public_kwargs(loader["kwargs"])}
    return record


def _canonical(name: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(name, item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(name, v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    type_name = type(value).__module__ + "." + type(value).__qualname__
    if type_name == "torch.dtype":
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):  # a transformers PretrainedConfig or similar
        return {"__type__": type(value).__name__, "value": _canonical(name, to_dict())}
    raise ConfigError(
        f"Argument {name}={value!r} cannot be part of a cache key (no stable JSON form). Pass plain values "
        "(numbers, strings, dtypes, configs), or load the model yourself and call "
        "pdo_hub.optimizers.optimize_downloaded_model."
    )


def safe_source_name(name: str) -> str:
    """A cache-safe single-part id made from a file or folder name (`my model.pt` -> `my_model.pt`)."""
    cleaned = _SAFE.sub("_", name).replace("..", "_").replace("--", "-").strip("._-")
    return cleaned[:96] or "model"
