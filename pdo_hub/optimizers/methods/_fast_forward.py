"""Run a dynamic-int8 model as a frozen TorchScript trace per input shape, eager otherwise.

A dynamic-int8 transformer spends a large share of its batch-1 time in Python dispatch between its
small ops (all-MiniLM-L6-v2, seq 128, 2 threads: eager ~6.6 ms, the same model traced and frozen
~4.9 ms). `accelerate(model)` sets an instance-level `forward` (the model keeps its class, its state
dict and its `config`) that, for an eligible call, runs a frozen trace built on the first call with
that input signature, and otherwise the model's own forward.

A signature is traced on its third call, so one-off shapes never pay for a trace, and a model
builds at most `_MAX_BUILDS` traces in its life: workloads whose shapes keep changing (dynamic
padding) stay eager instead of retracing; pad to fixed lengths to get the fast path.

Eligible: eval mode, gradients off (`torch.no_grad` / `torch.inference_mode`: with gradients on the
caller may want autograd, which a frozen trace drops), and only tensor inputs, either positional or
the transformers keywords in `_TRACEABLE_KEYWORDS`. A new trace is kept only if tracing raised no
`TracerWarning` outside transformers (a data-dependent Python branch would be baked in) and its outputs on the first
inputs are identical to eager; otherwise that signature stays eager. Traces are never saved or
pickled, are dropped by a forward in training mode and by `load_state_dict`, and at most `_MAX_TRACES` are kept (LRU).
Warm-up: the third call per signature traces and freezes (MiniLM seq 128: ~0.3 s).
For transformers models on SDPA, `accelerate` also installs `_small_attention` (plain matmul attention
where the score matrix is small, faster there on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections import OrderedDict
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from . import _small_attention

logger = logging.getLogger(__name__)
_MAX_TRACES = 8
_TRACE_AFTER_CALLS = 3  # a one-off shape is not worth a ~1-2 s trace
_MAX_BUILDS = 2 * _MAX_TRACES  # inputs whose shapes keep changing stay eager rather than retrace forever
_FAILED = object()
_TRACEABLE_KEYWORDS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class _Adapter(nn.Module):
    """Tensors in, flat tensors out: the shape torch.jit.trace accepts."""

    def __init__(self, model: nn.Module, keywords: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keywords = model, keywords

    def forward(self, *tensors: torch.Tensor) -> tuple:
        n_args = len(tensors) - len(self.keywords)
        out = type(self.model).forward(self.model, *tensors[:n_args], **dict(zip(self.keywords, tensors[n_args:])))
        return tuple(pytree.tree_flatten(out)[0])


class FastForward:
    """The instance-level `forward` that `accelerate` installs; holds the traces (never saved)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.traces: OrderedDict = OrderedDict()
        self.seen: dict = {}  # calls per signature not yet traced
        self.builds = 0
        self.lock = threading.Lock()
        self.__wrapped__ = type(model).forward.__get__(model)  # inspect.signature(model.forward) sees the real one

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        eager = type(self.model).forward
        if not self._eligible(args, kwargs):
            return eager(self.model, *args, **kwargs)
        keywords = tuple(name for name in _TRACEABLE_KEYWORDS if name in kwargs)
        tensors = args + tuple(kwargs[name] for name in keywords)
        key = (len(args), keywords) + tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        seen = 0
        with self.lock:
            entry = self.traces.get(key)
            if entry is not None:
                self.traces.move_to_end(key)
            elif self.builds < _MAX_BUILDS:
                self.seen[key] = seen = self.seen.get(key, 0) + 1
                if len(self.seen) > 64 * _MAX_TRACES:  # bounded memory for endlessly varying shapes
                    self.seen.clear()
        if entry is None:
            output = eager(self.model, *args, **kwargs)
            if self.builds < _MAX_BUILDS and seen >= _TRACE_AFTER_CALLS:
                built = self._build(tensors, keywords, output)
                with self.lock:
                    self.builds += 1
                    self.traces[key] = built
                    if len(self.traces) > _MAX_TRACES:
                        self.traces.popitem(last=False)
            return output
        if entry is _FAILED:
            return eager(self.model, *args, **kwargs)
        trace, spec = entry
        return pytree.tree_unflatten(list(trace(*tensors)), spec)

    def _eligible(self, args: tuple, kwargs: dict) -> bool:
        if self.model.training:
            self.clear()  # training may change the weights that a frozen trace holds as constants
            return False
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if not args and not kwargs:
            return False
        if any(name not in _TRACEABLE_KEYWORDS for name in kwargs):
            return False
        return all(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values()))

    def _build(self, tensors: tuple, keywords: tuple[str, ...], reference: Any) -> Any:
        leaves, spec = pytree.tree_flatten(reference)
        if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            return _FAILED
        try:
            # Outside inference mode, so the frozen constants are ordinary tensors usable in any mode.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(record=True) as caught, _quiet_transformers():
                warnings.simplefilter("always")
                example = tuple(t.clone() for t in tensors)
                adapter = _Adapter(self.model, keywords).eval()
                trace = torch.jit.freeze(torch.jit.trace(adapter, example, check_trace=False).eval())
                outputs = trace(*example)
        except Exception as err:  # not traceable (data-dependent shapes, unsupported ops): stay eager
            logger.debug("dynamic: eager for inputs %s: %s: %s", [tuple(t.shape) for t in tensors], type(err).__name__, err)
            return _FAILED
        if any(issubclass(w.category, torch.jit.TracerWarning) and not _trace_aware(w.filename) for w in caught):
            logger.debug("dynamic: eager for inputs %s: the trace may not generalize", [tuple(t.shape) for t in tensors])
            return _FAILED
        if len(outputs) != len(leaves) or not all(torch.equal(a, b) for a, b in zip(outputs, leaves)):
            logger.debug("dynamic: eager for inputs %s: the trace's outputs differ from eager", [tuple(t.shape) for t in tensors])
            return _FAILED
        return trace, spec

    def clear(self) -> None:
        with self.lock:
            self.traces.clear()

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle must not copy TorchScript objects; traces are rebuilt on demand.
        return {"model": self.model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"])


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Scripting the module reads every attribute, including transformers' `loss_function` property,
    # which logs a confusing "loss_type=None ... unrecognized" warning to the user.
    noisy = logging.getLogger("transformers")
    previous = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        yield
    finally:
        noisy.setLevel(previous)


def _trace_aware(filename: str) -> bool:
    # transformers supports jit tracing (its masks are not skipped while tracing); its remaining
    # TracerWarnings turn shapes into Python values, and a trace is only reused for the same shapes.
    # `_small_attention` branches on shapes only, for the same reason.
    if f"{os.sep}transformers{os.sep}" in filename:
        return True
    return os.path.realpath(filename) == os.path.realpath(_small_attention.__file__)


def accelerate(model: nn.Module) -> nn.Module:
    """Install `FastForward` on `model` (idempotent), with small-input CPU attention for transformers models; returns the model."""
    if isinstance(model.__dict__.get("forward"), FastForward):
        return model
    _small_attention.install(model)
    model.forward = FastForward(model)
    model.register_load_state_dict_post_hook(_forget_traces)
    return model


def _forget_traces(module: nn.Module, incompatible_keys: Any) -> None:
    # A frozen trace holds the old weights as constants: new weights need a new trace.
    fast = module.__dict__.get("forward")
    if isinstance(fast, FastForward):
        fast.clear()
