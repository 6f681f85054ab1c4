"""torchvision architectures: weights through torchvision's own download, keyed by the file's sha256.

torchvision downloads weights with `torch.hub.load_state_dict_from_url` into
`<torch hub dir>/checkpoints/<file name>` and checks the sha256 prefix in the name on download. pdo-hub
lets it do exactly that (the builder is called with the weights), then keys the optimized model by the
sha256 of the file it loaded, and records `file name -> sha256` so an offline call needs no file at all.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch.nn as nn

from pdo_hub.cache import CacheEntry, CacheKey, OptimizedCache
from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError, InvalidRepoIdError, OfflineCacheMissError
from pdo_hub.hub import _keys, examples, skeleton
from pdo_hub.hub._context import bypass
from pdo_hub.hub.calibration import Calibration, calibration_argument, eval_fn_record, load_images, read_calibration
from pdo_hub.hub._files import sha256_of
from pdo_hub.hub.flow import Request, load_or_build, write_entry
from pdo_hub.hub.transformers_models import offline_reason
from pdo_hub.optimizers import create_post_download_optimizer, load_optimized

logger = logging.getLogger(__name__)


def resolve_weights(builder: Callable[..., nn.Module], weights: Any) -> Any:
    """The WeightsEnum member `weights` names for `builder` (`"DEFAULT"`, `"IMAGENET1K_V1"`,
    `"ResNet18_Weights.IMAGENET1K_V1"` or a member), or None.

    Raises:
        ConfigError: when the name is not a weights of this architecture.
    """
    if weights is None:
        return None
    from torchvision.models import get_model_weights

    enum = get_model_weights(builder)
    try:
        return enum.verify(weights)
    except (KeyError, TypeError, ValueError) as err:
        known = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise ConfigError(f"weights={weights!r} is not a weights of {builder.__name__}; known: {known}.") from err


def weights_file(weights: Any) -> Path:
    """Where torchvision keeps (or will download) the file of `weights`."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def get_model(name: str, weights: Any = "DEFAULT", *, config: PostDownloadOptimizationConfig | dict | str | None = None,
              local_files_only: bool = False, verify: bool = False, builder: Callable[..., nn.Module] | None = None,
              calibration_data: Any = None, eval_fn: Callable[[nn.Module], float] | None = None,
              calibration: Any = None, **kwargs: Any) -> nn.Module:
    """The optimized model of a torchvision architecture with pretrained weights.

    Args:
        name: Registered torchvision model name (`resnet18`, `mobilenet_v3_small`, ...).
        weights: Weights to use (name or WeightsEnum member). None returns the plain random-init model.
        config: Optimization config (default: the seed's).
        local_files_only: No network: load from the optimized cache or raise.
        verify: Re-hash the entry's files before loading.
        builder: The builder to call (default: torchvision's registry); used by the interception layer.
        calibration_data: Inputs from your domain to calibrate and judge candidates on, instead of inputs
            distilled from the model's BatchNorm statistics: a folder of PNG/JPEG images (through the
            weights' own preprocessing), a preprocessed tensor batch, or a list of them; part of the key.
        eval_fn: Task metric `eval_fn(model) -> accuracy in [0, 1]` on your labelled data: candidates are
            then judged by the accuracy they lose on it; its module, name and code are part of the key.
        calibration: The older name of `calibration_data`.
        **kwargs: Builder arguments (part of the key).

    Raises:
        OfflineCacheMissError: offline and the variant is not cached.
        ConfigError: unknown model or weights.
    """
    import torchvision.models

    if builder is None:
        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError as err:
            raise ConfigError(f"{name!r} is not a torchvision model; see torchvision.models.list_models().") from err
    if "pretrained" in kwargs:  # torchvision's legacy flag, mapped the way its builders map it
        pretrained = kwargs.pop("pretrained")
        weights = weights if weights is not None else ("DEFAULT" if pretrained else None)
    member = resolve_weights(builder, weights)
    if member is None:
        with bypass():
            return builder(weights=None, **kwargs)
    opt_config = load_config(config)
    calib = read_calibration(calibration_argument(calibration_data, calibration))
    source_id, loader = weights_source_id(member), vision_loader_record(name, kwargs, calib, eval_fn)
    cache = OptimizedCache()
    reason = offline_reason(local_files_only)
    path = weights_file(member)
    sha = _file_revision(cache, source_id, path, member, builder, offline=reason is not None, reason=reason or "")
    key = CacheKey("torchvision", source_id, sha, _keys.variant_hash(opt_config, loader))
    request = Request(
        key=key, what=f"torchvision {name} with {source_id} ({path.name}, config hash {opt_config.config_hash()[:12]})",
        fetch_hint=f"pdo_hub.get_model({name!r}, weights={source_id!r}, config=...)",
        offline=reason is not None, offline_reason=reason or "", verify=verify,
    )
    source = {"kind": "torchvision", "source_id": source_id, "revision": sha, "builder": name, "loader": loader,
              "file_name": path.name, "url": member.url, "config_hash": opt_config.config_hash(), "key_hash": key.config_hash}

    def write(folder: Path) -> None:
        with bypass():
            original = builder(weights=member, progress=False, **kwargs).eval()
        inputs = _image_inputs(member, builder, calib)
        optimized, report = create_post_download_optimizer(opt_config).optimize_model(
            model=original, model_name=name, example_inputs=inputs[0], eval_fn=eval_fn,
            calibration_data=inputs if calib is not None else None)
        write_entry(folder, optimized, report, source)
        meta = json.dumps(dict(member.meta), indent=2, sort_keys=True, default=str)
        (folder / "weights_meta.json").write_text(meta, encoding="utf-8")

    def load(entry: CacheEntry) -> nn.Module:
        with bypass():
            fresh = skeleton.builder_skeleton(builder, **kwargs)
        return load_optimized(entry.path, fresh, assign=True)

    return load_or_build(request, load, write, cache)


def weights_source_id(member: Any) -> str:
    """The source id of torchvision weights: `ResNet18_Weights.IMAGENET1K_V1`."""
    return f"{type(member).__name__}.{member.name}"


def vision_loader_record(name: str, kwargs: dict[str, Any], calibration: Calibration | None = None,
                         eval_fn: Any = None) -> dict[str, Any]:
    """How the original is built, calibrated and judged: part of the cache key and of the source record."""
    loader: dict[str, Any] = {"library": "torchvision", "builder": name, "kwargs": _keys.canonical_kwargs(kwargs)}
    if calibration is not None:
        if calibration.kind == "text":
            raise ConfigError("torchvision models take images as calibration data (a folder of images or tensors), not sentences.")
        loader["calibration"] = calibration.describe()
    if eval_fn is not None:
        loader["eval_fn"] = eval_fn_record(eval_fn)
    return loader


def known_revision(source_id: str, member: Any, cache: OptimizedCache | None = None) -> str | None:
    """The weights file's sha256 without network: recorded when the variant was built, else hashed from disk."""
    cache = cache or OptimizedCache()
    path = weights_file(member)
    return _known_ref(cache, source_id, path.name) or (sha256_of(path) if path.is_file() else None)


def _file_revision(cache: OptimizedCache, source_id: str, path: Path, member: Any, builder: Callable[..., nn.Module],
                   *, offline: bool, reason: str) -> str:
    """sha256 of the weights file, downloading it through torchvision when missing (online)."""
    if not path.is_file():
        known = _known_ref(cache, source_id, path.name)
        if known is not None:
            return known  # the variant was built before: the original file is not needed to load it
        if offline:
            raise OfflineCacheMissError(
                f"torchvision weights {source_id} ({path.name}) are neither in the torch hub cache ({path.parent}) nor "
                f"known to the optimized cache at {cache.root}, and offline mode is on ({reason}). Run once with network "
                f"access: pdo_hub.get_model({builder.__name__!r}, weights={source_id!r}), then retry offline."
            )
        member.get_state_dict(progress=False, check_hash=True)  # torchvision's own download + hash check
    sha = sha256_of(path)
    try:
        cache.set_ref("torchvision", source_id, path.name, sha)
    except InvalidRepoIdError as err:
        logger.warning("Cannot record %s for offline use: %s", path.name, err)
    return sha


def _known_ref(cache: OptimizedCache, source_id: str, file_name: str) -> str | None:
    try:
        return cache.resolve_ref("torchvision", source_id, file_name)
    except InvalidRepoIdError:
        return None


def _image_inputs(member: Any, builder: Callable[..., nn.Module], calibration: Calibration | None = None) -> list:
    """The user's calibration images, or else one example input (the optimizer distills the rest from it)."""
    if calibration is not None and calibration.batches:
        return list(calibration.batches)
    if calibration is not None:
        images = load_images(calibration, member.transforms())
        if ".detection" in builder.__module__:
            return [([image[0]],) for image in images]
        return images
    size = 224
    try:
        crop = getattr(member.transforms(), "crop_size", None)
        size = int(crop[0] if isinstance(crop, (list, tuple)) else crop or size)
    except Exception:  # transforms of some weights take arguments; the default size is fine for calibration
        pass
    images = examples.image_inputs(1, size=size)
    if ".detection" in builder.__module__:  # detection models take a list of CHW images
        return [([image[0]],) for image in images]
    return images
