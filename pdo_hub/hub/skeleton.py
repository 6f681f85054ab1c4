"""Fresh, un-optimized instances of an original architecture, built fast to receive cached weights.

A cache hit replays the recipe on a skeleton and loads every tensor strictly, so initializing the
skeleton's weights is wasted work (it dominates the load time of a small model). The meta device is
not used: non-persistent buffers (e.g. BERT's `position_ids`) are not in the state dict and would stay
empty.

Skipping must stay local to the thread that builds the skeleton: a thread building a model at the same
time (training code, another load) must get initialized weights. Swapping the `torch.nn.init` functions
for no-ops during a block, as transformers' `no_init_weights` does, is process-wide, and two such
blocks overlapping in two threads can even leave the no-ops installed for good (each restores what it
found on entry). Instead the init functions are wrapped once per process by functions that skip only
when a context variable says so, and otherwise call the original with the same arguments;
`no_weight_init()` sets it for the current thread (or asyncio task) only. transformers models are
skipped at `PreTrainedModel.init_weights` the same way: their `_init_weights` reaches torch's functions
through references of its own.

transformers' `guard_torch_init_functions` (around every transformers model's initialization) swaps these
same attributes for its own functions while it runs: a skeleton built in another thread meanwhile then
initializes its weights for nothing (slower, still correct).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch.nn as nn

from pdo_hub.hub._imports import LAZY_IMPORTS

_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)
# Packages whose modules may hold an init function imported by name (`from torch.nn.init import
# xavier_uniform_` in torch.nn.modules.activation): those references are wrapped too.
_BOUND_BY_NAME = ("torch.", "torchvision.")

_SKIP: ContextVar[bool] = ContextVar("pdo_hub_skip_weight_init", default=False)
_INSTALL_LOCK = threading.Lock()
_installed: set[str] = set()
_built: set[tuple[type, type]] = set()  # (Auto class, config class) pairs built once already


def skipping_init() -> bool:
    """Whether weight initialization is skipped in the current thread or task."""
    return _SKIP.get()


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    """Skip `torch.nn.init` and transformers' `init_weights` in the current thread or task only.

    Threads started inside the block, and every other thread, initialize weights as usual.
    """
    _install_torch()
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def transformers_skeleton(auto_class: Any, hf_config: Any) -> nn.Module:
    """`auto_class.from_config(hf_config)` without weight initialization."""
    _install_transformers()
    kind = (auto_class, type(hf_config))
    with no_weight_init():
        if kind in _built:
            return auto_class.from_config(hf_config)
        with LAZY_IMPORTS:  # the first one imports the model's module: one thread at a time
            model = auto_class.from_config(hf_config)
        _built.add(kind)
        return model


def builder_skeleton(builder: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """`builder(weights=None, **kwargs)` (a torchvision builder) without weight initialization."""
    with no_weight_init():
        return builder(weights=None, **kwargs)


def _skippable(original: Callable, result: Callable[..., Any]) -> Callable:
    """`original`, except that it returns `result(*args, **kwargs)` instead while skipping."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _SKIP.get():
            return result(*args, **kwargs)
        return original(*args, **kwargs)

    wrapper.__pdo_skippable__ = True
    return wrapper


def _first_argument(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs.get("tensor")  # the init functions return the tensor they fill


def _install_torch() -> None:
    """Wrap every `torch.nn.init` function, and the references to them imported by name, once."""
    if "torch" in _installed:
        return
    from torch.nn import init

    with _INSTALL_LOCK:
        if "torch" in _installed:
            return
        wrapped = {}  # name -> (torch's function, its wrapper)
        for name in _INIT_FUNCTIONS:
            original = getattr(init, name, None)
            if callable(original) and not getattr(original, "__pdo_skippable__", False):
                wrapped[name] = (original, _skippable(original, _first_argument))
                setattr(init, name, wrapped[name][1])
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith(_BOUND_BY_NAME):
                namespace = getattr(module, "__dict__", {})
                for name, (original, wrapper) in wrapped.items():
                    if namespace.get(name) is original:  # identity: only torch's own function
                        setattr(module, name, wrapper)
        _installed.add("torch")


def _install_transformers() -> None:
    """Wrap `PreTrainedModel.init_weights` once (transformers' `no_init_weights` empties it instead)."""
    if "transformers" in _installed:
        return
    with LAZY_IMPORTS, _INSTALL_LOCK:
        from transformers.modeling_utils import PreTrainedModel

        if "transformers" not in _installed:
            original = PreTrainedModel.init_weights
            if not getattr(original, "__pdo_skippable__", False):
                PreTrainedModel.init_weights = _skippable(original, lambda *args, **kwargs: None)
            _installed.add("transformers")
