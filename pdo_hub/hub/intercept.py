"""`intercept()`: unmodified torchvision and transformers code receives optimized models.

transformers: each Auto model class (`AutoModel`, `AutoModelForCausalLM`, ...) holds its own copy of
`from_pretrained` (made by `auto_class_update`), so every subclass of `_BaseAutoModelClass` is wrapped.
Patching huggingface_hub would not do: transformers imports its functions by name, and the caller must
get the optimized model, not merely optimized files.

torchvision: `WeightsEnum.get_state_dict` only sees the weights, while the caller must get the optimized
model back, so the builders are wrapped instead: in the registry that `get_model`/`get_model_builder`
read (`BUILTIN_MODELS`) and under every `torchvision.models*` module attribute that holds the builder.
Names bound before entering the block (`from torchvision.models import resnet18`) cannot be reached.

Everything replaced is recorded and put back in reverse order on exit, also after an exception, so the
originals are restored exactly (same objects).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Any, Callable, Iterator

from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.hub._context import bypassing

logger = logging.getLogger(__name__)


class _Patches:
    """Replaced attributes and dict items, restorable in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def set_attr(self, owner: Any, name: str, value: Any) -> None:
        had, old = name in vars(owner), vars(owner).get(name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old) if had else delattr(owner, name))

    def set_item(self, mapping: dict, key: Any, value: Any) -> None:
        old = mapping[key]
        mapping[key] = value
        self._undo.append(lambda: mapping.__setitem__(key, old))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


@contextlib.contextmanager
def intercept(config: PostDownloadOptimizationConfig | dict | str | None = None, *, transformers: bool = True,
              torchvision: bool = True) -> Iterator[None]:
    """Within the block, transformers Auto classes and torchvision builders return optimized models.

    Args:
        config: Optimization config for every model loaded in the block (default: the seed's).
        transformers: Wrap the transformers Auto model classes.
        torchvision: Wrap the torchvision builders and `get_model`.

    Example:
        >>> with pdo_hub.intercept({"benchmark_optimizations": False}):
        ...     model = torchvision.models.resnet18(weights="DEFAULT")   # optimized, from the cache
        ...     bert = transformers.AutoModel.from_pretrained("org/name")  # optimized too
    """
    opt_config = load_config(config)
    patches = _Patches()
    try:
        if transformers:
            _patch_transformers(patches, opt_config)
        if torchvision:
            _patch_torchvision(patches, opt_config)
        yield
    finally:
        patches.restore()


def _patch_transformers(patches: _Patches, opt_config: PostDownloadOptimizationConfig) -> None:
    import transformers.models.auto.modeling_auto  # noqa: F401  (defines every Auto model class)
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    # `auto_class_update` gives each Auto class its own copy of `from_pretrained`, so each is wrapped.
    pending, seen = [_BaseAutoModelClass], set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        original = vars(cls).get("from_pretrained")
        if isinstance(original, classmethod):
            patches.set_attr(cls, "from_pretrained", classmethod(_wrap_from_pretrained(original, opt_config)))


def _wrap_from_pretrained(original: classmethod, opt_config: PostDownloadOptimizationConfig) -> Callable:
    @functools.wraps(original.__func__)
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        # Positional model args have no place in a cache key; user subclasses have no Auto name to rebuild.
        if bypassing() or model_args or not _is_transformers_auto(cls):
            return original.__get__(None, cls)(pretrained_model_name_or_path, *model_args, **kwargs)
        return _optimized_pretrained(cls, str(pretrained_model_name_or_path), opt_config, kwargs)

    return from_pretrained


def _is_transformers_auto(cls: type) -> bool:
    import transformers

    return getattr(transformers, cls.__name__, None) is cls


def _optimized_pretrained(cls: type, name: str, opt_config: PostDownloadOptimizationConfig, kwargs: dict) -> Any:
    from pdo_hub.hub import local, transformers_models

    if os.path.isdir(name):
        return local.load_local(name, auto_class=cls.__name__, config=opt_config,
                                local_files_only=bool(kwargs.get("local_files_only", False)))
    model_config = kwargs.pop("config", None)
    return transformers_models.from_pretrained(
        name, revision=kwargs.pop("revision", None), config=opt_config, auto_class=cls.__name__,
        cache_dir=kwargs.pop("cache_dir", None), local_files_only=bool(kwargs.pop("local_files_only", False)),
        token=kwargs.pop("token", None), model_config=model_config, **kwargs,
    )


def _patch_torchvision(patches: _Patches, opt_config: PostDownloadOptimizationConfig) -> None:
    import torchvision.models  # noqa: F401  (registers every builder)
    from torchvision.models import _api

    modules = [m for n, m in list(sys.modules.items()) if n.startswith("torchvision.models") and m is not None]
    for name, builder in list(_api.BUILTIN_MODELS.items()):
        if ".quantization" in builder.__module__:
            continue  # already-quantized weights: nothing for pdo-hub to add
        wrapper = _wrap_builder(name, builder, opt_config)
        patches.set_item(_api.BUILTIN_MODELS, name, wrapper)
        for module in modules:
            if vars(module).get(builder.__name__) is builder:
                patches.set_attr(module, builder.__name__, wrapper)


def _wrap_builder(name: str, builder: Callable, opt_config: PostDownloadOptimizationConfig) -> Callable:
    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        weights = kwargs.get("weights")
        if bypassing() or args or (weights is None and not kwargs.get("pretrained")):
            return builder(*args, **kwargs)  # random init: nothing to fetch or optimize
        from pdo_hub.hub import torchvision_models

        kwargs.pop("weights", None)
        kwargs.pop("progress", None)
        return torchvision_models.get_model(name, weights, config=opt_config, builder=builder, **kwargs)

    return wrapper
