"""`intercept()`: unmodified torchvision and transformers code receives optimized models.

transformers: each Auto model class (`AutoModel`, `AutoModelForCausalLM`, ...) holds its own copy of
`from_pretrained` (made by `auto_class_update`), so every subclass of `_BaseAutoModelClass` is wrapped.
Patching huggingface_hub would not do: transformers imports its functions by name, and the caller must
get the optimized model, not merely optimized files.

torchvision: `WeightsEnum.get_state_dict` only sees the weights, while the caller must get the optimized
model back, so the builders are wrapped instead: in the registry that `get_model`/`get_model_builder`
read (`BUILTIN_MODELS`) and under every `torchvision.models*` module attribute that holds the builder.
Names bound before entering the block (`from torchvision.models import resnet18`) cannot be reached.

Threads: patching is process-wide, interception is not. The wrappers are installed when the first
`intercept()` block of the process is entered and removed when the last one is left (a count under a
lock), so blocks overlapping in several threads never leave them installed or remove them too early;
everything replaced is put back in reverse order, the same objects. A wrapper optimizes only in a
thread (or asyncio task) that is inside an `intercept()` block, reading its config from a context
variable; everywhere else it calls the original, so other threads' models stay stock. Threads started
inside a block are not inside it (run them with `contextvars.copy_context().run` to pass it on). When
blocks nest, the innermost one decides (its config, and whether transformers/torchvision are on).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.hub._context import bypassing
from pdo_hub.hub._imports import LAZY_IMPORTS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scope:
    """The innermost `intercept()` block of a thread or task."""

    config: PostDownloadOptimizationConfig
    families: frozenset[str]
    #: What every model loaded in the block is calibrated and judged on (`calibration_data=`, `eval_fn=`).
    judging: tuple[tuple[str, Any], ...] = ()


_SCOPE: ContextVar[_Scope | None] = ContextVar("pdo_hub_intercept", default=None)


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


class _Installed:
    """The wrappers of each family, installed while at least one block in the process uses them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}
        self._patches: dict[str, _Patches] = {}

    def enter(self, families: list[str]) -> None:
        with LAZY_IMPORTS, self._lock:  # installing imports transformers/torchvision modules
            entered: list[str] = []
            try:
                for family in families:
                    if not self._users.get(family):
                        patches = _Patches()
                        try:
                            _INSTALLERS[family](patches)
                        except BaseException:
                            patches.restore()
                            raise
                        self._patches[family] = patches
                    self._users[family] = self._users.get(family, 0) + 1
                    entered.append(family)
            except BaseException:
                self._leave(entered)
                raise

    def leave(self, families: list[str]) -> None:
        with self._lock:
            self._leave(families)

    def _leave(self, families: list[str]) -> None:
        for family in reversed(families):
            self._users[family] -= 1
            if not self._users[family]:
                self._patches.pop(family).restore()


_INSTALLED = _Installed()


@contextlib.contextmanager
def intercept(config: PostDownloadOptimizationConfig | dict | str | None = None, *, transformers: bool = True,
              torchvision: bool = True, calibration_data: Any = None,
              eval_fn: Callable[[Any], float] | None = None) -> Iterator[None]:
    """Within the block, transformers Auto classes and torchvision builders return optimized models.

    Only calls made by the thread (or asyncio task) that entered the block are intercepted; see the
    module docstring.

    Args:
        config: Optimization config for every model loaded in the block (default: the seed's).
        transformers: Wrap the transformers Auto model classes.
        torchvision: Wrap the torchvision builders and `get_model`.
        calibration_data: Inputs from your domain for every model loaded in the block (see
            `pdo_hub.get_model` and `pdo_hub.from_pretrained` for what each family takes).
        eval_fn: Task metric `eval_fn(model) -> accuracy in [0, 1]` judging every model loaded in the block.

    Example:
        >>> with pdo_hub.intercept({"benchmark_optimizations": False}):
        ...     model = torchvision.models.resnet18(weights="DEFAULT")   # optimized, from the cache
        ...     bert = transformers.AutoModel.from_pretrained("org/name")  # optimized too
    """
    opt_config = load_config(config)
    families = [name for name, wanted in (("transformers", transformers), ("torchvision", torchvision)) if wanted]
    _INSTALLED.enter(families)
    judging = tuple((k, v) for k, v in (("calibration_data", calibration_data), ("eval_fn", eval_fn)) if v is not None)
    token = _SCOPE.set(_Scope(opt_config, frozenset(families), judging))
    try:
        yield
    finally:
        _SCOPE.reset(token)
        _INSTALLED.leave(families)


def _active(family: str) -> PostDownloadOptimizationConfig | None:
    """The config to optimize with when the caller is inside a block intercepting `family`, else None."""
    scope = _SCOPE.get()
    if scope is None or family not in scope.families or bypassing():
        return None
    return scope.config


def _judging() -> dict[str, Any]:
    """The innermost block's `calibration_data=` / `eval_fn=` (only those given)."""
    scope = _SCOPE.get()
    return dict(scope.judging) if scope is not None else {}


def _patch_transformers(patches: _Patches) -> None:
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
            patches.set_attr(cls, "from_pretrained", classmethod(_wrap_from_pretrained(original)))


def _wrap_from_pretrained(original: classmethod) -> Callable:
    @functools.wraps(original.__func__)
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        opt_config = _active("transformers")
        # Positional model args have no place in a cache key; user subclasses have no Auto name to rebuild.
        if opt_config is None or model_args or not _is_transformers_auto(cls):
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
                                local_files_only=bool(kwargs.get("local_files_only", False)), **_judging())
    model_config = kwargs.pop("config", None)
    return transformers_models.from_pretrained(
        name, revision=kwargs.pop("revision", None), config=opt_config, auto_class=cls.__name__,
        cache_dir=kwargs.pop("cache_dir", None), local_files_only=bool(kwargs.pop("local_files_only", False)),
        token=kwargs.pop("token", None), model_config=model_config, **_judging(), **kwargs,
    )


def _patch_torchvision(patches: _Patches) -> None:
    import torchvision.models  # noqa: F401  (registers every builder)
    from torchvision.models import _api

    modules = [m for n, m in list(sys.modules.items()) if n.startswith("torchvision.models") and m is not None]
    for name, builder in list(_api.BUILTIN_MODELS.items()):
        if ".quantization" in builder.__module__:
            continue  # already-quantized weights: nothing for pdo-hub to add
        wrapper = _wrap_builder(name, builder)
        patches.set_item(_api.BUILTIN_MODELS, name, wrapper)
        for module in modules:
            if vars(module).get(builder.__name__) is builder:
                patches.set_attr(module, builder.__name__, wrapper)


def _wrap_builder(name: str, builder: Callable) -> Callable:
    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        weights = kwargs.get("weights")
        opt_config = _active("torchvision")
        if opt_config is None or args or (weights is None and not kwargs.get("pretrained")):
            return builder(*args, **kwargs)  # not intercepted here, or random init: nothing to optimize
        from pdo_hub.hub import torchvision_models

        kwargs.pop("weights", None)
        kwargs.pop("progress", None)
        return torchvision_models.get_model(name, weights, config=opt_config, builder=builder, **_judging(), **kwargs)

    return wrapper


_INSTALLERS: dict[str, Callable[[_Patches], None]] = {"transformers": _patch_transformers, "torchvision": _patch_torchvision}
