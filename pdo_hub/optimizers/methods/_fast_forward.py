"""Run a transformers-style int8 model through one frozen TorchScript trace for all input shapes.

A dynamic-int8 transformer spends a large share of its small-input time in Python dispatch between
its small ops, which a frozen trace removes. `accelerate(model)` sets an instance-level `forward` (the model keeps its class,
its state dict and its `config`) that runs eligible calls through `_traces.TraceCache`: one trace per
input structure, built on the second call (~0.3 s for MiniLM) and checked against eager once per
dimension that varies, so traffic of any lengths and batch sizes pays one trace, not one per shape.
Where a model bakes a shape into its trace, that structure falls back to a trace per shape. A loaded
variant whose record keeps its input spec has that trace built and checked at load (`_warm_up`), so
the first requests run as fast as later ones. The first eager call also groups sibling int8 layers
that read the same input (`_shared_input`: query, key and value share one quantization and one GEMM),
and int8 layers whose output only an exact GELU reads (`_fused_activation`: the GELU runs inside the op),
and blocks that end in `LayerNorm(dense(x) + residual)` (`_fused_norm`: one op).
A large batch of token sequences runs as sub-batches of at most `_sub_batches.TOKENS_PER_PASS` tokens
(buffers that stay small are reused instead of mapped fresh on every call), once a check shows that the
model's sequences do not see each other.

Eligible: eval mode, gradients off (`torch.no_grad` / `torch.inference_mode`: with gradients on the
caller may want autograd, which a frozen trace drops), and only tensor inputs, either positional or
the transformers keywords in `_TRACEABLE_KEYWORDS`. A new trace is kept only if tracing raised no
`TracerWarning` outside transformers (a data-dependent Python branch would be baked in) and its
outputs on the first inputs are identical to eager; otherwise that structure stays eager. Traces are
never saved or pickled, and are dropped by a forward in training mode and by `load_state_dict`.
For transformers models on SDPA, `accelerate` also installs `_small_attention` (plain matmul attention
where the score matrix is small, faster there on CPU; its size test stays a branch inside the trace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from . import _small_attention
from ._fused_activation import fuse_gelus, unfuse
from ._fused_norm import fuse_norms, unfuse_norms
from ._idle_threads import IdleThreads, input_size
from ._shared_input import group_siblings, ungroup
from ._sub_batches import rows_per_pass, run_in_sub_batches
from ._traces import FAILED, TraceCache, identical

logger = logging.getLogger(__name__)
_TRACE_AFTER_CALLS = 2  # a model called once is not worth a trace
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

    def __init__(self, model: nn.Module, warm_up_inputs: list | None = None) -> None:
        self.model = model
        self.cache = TraceCache(trace_after=_TRACE_AFTER_CALLS)
        self.warm_up_inputs = warm_up_inputs  # the record's input spec (`_warm_up`)
        self.probed = False  # whether an eager call has grouped sibling int8 layers and fused GELUs
        self.probing = threading.RLock()  # also held by `_fused_activation.layers_alone`
        self.sub_batches_sound: dict = {}  # structure -> whether large batches may run in sub-batches (checked once)
        self.idle_threads = IdleThreads()  # small calls after an idle spell may run on one thread (`_idle_threads`)
        self.__wrapped__ = type(model).forward.__get__(model)  # inspect.signature(model.forward) sees the real one

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.idle_threads.call(input_size(args, kwargs)):
            return self._call(args, kwargs)

    def warm_up(self, args: tuple, kwargs: dict) -> None:
        """One call that builds the trace for its inputs' structure now (`_warm_up`)."""
        if self._eligible(args, kwargs):
            self._call(args, kwargs, trace_now=True)

    def _call(self, args: tuple, kwargs: dict, trace_now: bool = False) -> Any:
        eager = type(self.model).forward
        if not self._eligible(args, kwargs):
            return eager(self.model, *args, **kwargs)
        keywords = tuple(name for name in _TRACEABLE_KEYWORDS if name in kwargs)
        tensors = args + tuple(kwargs[name] for name in keywords)
        structure = (len(args), keywords) + tuple((t.dim(), t.dtype, t.device) for t in tensors)
        sound = self.sub_batches_sound.get(structure)
        rows = rows_per_pass(keywords, tensors) if not args and sound is not False else None
        if rows is None:
            return self._traced(structure, keywords, args, kwargs, trace_now)
        # A large batch: sub-batches (`_sub_batches`), once checked for this structure.
        part = lambda inputs: self._traced(structure, keywords, (), dict(zip(keywords, inputs)))  # noqa: E731
        output, self.sub_batches_sound[structure] = run_in_sub_batches(part, tensors, rows, checked=sound is True)
        return output

    def _traced(self, structure: tuple, keywords: tuple[str, ...], args: tuple, kwargs: dict, trace_now: bool = False) -> Any:
        """The call through the structure's trace (`TraceCache`), eager until one is built."""
        tensors = args + tuple(kwargs[name] for name in keywords)
        return self.cache.call(structure, tensors, lambda: self._eager(args, kwargs),
                               lambda inputs, reference: self._build(inputs, keywords, reference), identical, trace_now=trace_now)

    def _eager(self, args: tuple, kwargs: dict) -> Any:
        run = lambda: type(self.model).forward(self.model, *args, **kwargs)  # noqa: E731
        if self.probed:
            return run()
        # The first eager call (always before a trace is built) finds the int8 layers that share inputs,
        # then the int8 layers whose output only a GELU reads, then the add + LayerNorm blocks. Eager calls
        # of other threads wait for it: a fused op changes results in the last bits, and a trace is checked
        # against eager.
        with self.probing:
            if self.probed:
                return run()
            output, groups = group_siblings(self.model, run)
            if groups:
                logger.debug("dynamic: %d groups of int8 layers share their input: %s", len(groups), [len(g.members) for g in groups])
            output, fused = fuse_gelus(self.model, run, output)
            if fused:
                logger.debug("dynamic: %d int8 layers apply the GELU that follows them", fused)
            output, fused = fuse_norms(self.model, run, output)
            if fused:
                logger.debug("dynamic: %d blocks run their output projection, residual add and LayerNorm as one op", fused)
            self.probed = True
            return output

    @property
    def traces(self) -> list:
        """The traces built so far (`_traces.FAILED` for inputs that stay eager)."""
        return self.cache.runners()

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
            return FAILED
        try:
            # Outside inference mode, so the frozen constants are ordinary tensors usable in any mode.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(record=True) as caught, _quiet_transformers():
                warnings.simplefilter("always")
                example = tuple(t.clone() for t in tensors)
                adapter = _Adapter(self.model, keywords).eval()
                # optimize_numerics=False: freeze's folding passes (conv-bn, ...) change results in the last
                # bits, which can flip an int8 rounding; a trace must give exactly what eager gives.
                trace = torch.jit.freeze(torch.jit.trace(adapter, example, check_trace=False).eval(), optimize_numerics=False)
                outputs = trace(*example)
        except Exception as err:  # not traceable (data-dependent shapes, unsupported ops): stay eager
            logger.debug("dynamic: eager for inputs %s: %s: %s", [tuple(t.shape) for t in tensors], type(err).__name__, err)
            return FAILED
        if any(issubclass(w.category, torch.jit.TracerWarning) and not _trace_aware(w.filename) for w in caught):
            logger.debug("dynamic: eager for inputs %s: the trace may not generalize", [tuple(t.shape) for t in tensors])
            return FAILED
        if not identical(list(outputs), leaves):
            logger.debug("dynamic: eager for inputs %s: the trace's outputs differ from eager", [tuple(t.shape) for t in tensors])
            return FAILED

        def run(inputs: tuple) -> Any:
            with torch.no_grad():
                return pytree.tree_unflatten(list(trace(*inputs)), spec)

        return run

    def clear(self) -> None:
        self.cache.clear()
        ungroup(self.model.modules())
        unfuse(self.model.modules())
        unfuse_norms(self.model.modules())
        self.probed = False

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle must not copy TorchScript objects; traces are rebuilt on demand.
        return {"model": self.model, "warm_up_inputs": self.warm_up_inputs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state.get("warm_up_inputs"))


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
    # TracerWarnings turn shapes into Python values, which `TraceCache` checks against eager for
    # every dimension that varies.
    return f"{os.sep}transformers{os.sep}" in filename


def accelerate(model: nn.Module, warm_up_inputs: list | None = None) -> nn.Module:
    """Install `FastForward` on `model` (idempotent), with small-input CPU attention for transformers models; returns the model.

    `warm_up_inputs`: the input spec a record keeps (`_warm_up.input_spec`), so `load_optimized` can
    build the trace at load.
    """
    fast = model.__dict__.get("forward")
    if isinstance(fast, FastForward):
        fast.warm_up_inputs = warm_up_inputs or fast.warm_up_inputs
        return model
    _small_attention.install(model)
    model.forward = FastForward(model, warm_up_inputs)
    model.register_load_state_dict_post_hook(_forget_traces)
    return model


def _forget_traces(module: nn.Module, incompatible_keys: Any) -> None:
    # A frozen trace holds the old weights as constants: new weights need a new trace.
    fast = module.__dict__.get("forward")
    if isinstance(fast, FastForward):
        fast.clear()
