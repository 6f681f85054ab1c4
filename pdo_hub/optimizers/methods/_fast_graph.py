"""`QuantizedGraph`: an FX int8 graph that runs as a frozen TorchScript trace when it can.

An int8 ResNet-18 spends ~15% of its batch-1 time in Python dispatch between ~60 quantized ops
(measured here: FX graph 2.54 ms, the same graph traced and frozen 2.17 ms). The wrapper keeps the FX
graph as the source of truth (its state dict is what is saved and loaded) and builds, on the first
inference call per input structure (rank, dtype, device, memory format), a frozen trace of it that
serves every batch size and resolution (`_traces.TraceCache`: checked against the FX graph once per
dimension that varies; a graph that bakes a shape in gets a trace per shape). The trace is rebuilt
after `load_state_dict` and never pickled or saved. Calls that may need gradients, training mode, or
non-tensor inputs run the FX graph directly, as do inputs whose trace failed.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

from ._idle_threads import IdleThreads, input_size
from ._traces import FAILED, TraceCache, identical

logger = logging.getLogger(__name__)


class QuantizedGraph(nn.Module):
    """Wraps a converted FX GraphModule (`graph`); state dict keys are the graph's, prefixed `graph.`.

    Args:
        graph: the converted (int8) FX GraphModule.
        accelerate: build frozen traces for inference calls (off: always run the FX graph).
    """

    def __init__(self, graph: nn.Module, accelerate: bool = True) -> None:
        super().__init__()
        self.graph = graph
        self.accelerate = accelerate
        # A plain attribute: never a submodule or in the state dict; a deepcopy or pickle of the module gets an empty one.
        object.__setattr__(self, "_traces", TraceCache(trace_after=1))
        object.__setattr__(self, "_idle_threads", IdleThreads())  # `_idle_threads`: small calls after an idle spell
        self.register_load_state_dict_post_hook(_forget_traces)

    #: The record's input spec (`_warm_up`): set on a rebuilt graph, so `warm_up` can build its trace at load.
    warm_up_inputs = None

    def forward(self, *args: Any) -> Any:
        with self._idle_threads.call(input_size(args, {})):
            return self._call(args)

    def warm_up(self, args: tuple, kwargs: dict) -> None:
        """One call that builds the trace for its inputs' structure now (`_warm_up`)."""
        if kwargs or not self._can_trace(args):
            return
        self._call(args, trace_now=True)

    def _call(self, args: tuple, trace_now: bool = False) -> Any:
        if not self._can_trace(args):
            return self.graph(*args)
        structure = tuple((a.dim(), a.dtype, a.device, a.is_contiguous(memory_format=torch.channels_last)) for a in args)
        return self._traces.call(structure, args, lambda: self.graph(*args), lambda inputs, reference: self._trace(inputs), identical,
                                 trace_now=trace_now)

    def _can_trace(self, args: tuple) -> bool:
        if not self.accelerate or self.training or not args or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        return all(isinstance(a, torch.Tensor) and not a.requires_grad for a in args)

    def _trace(self, args: tuple) -> Any:
        try:
            # Outside inference mode, so the frozen constants are ordinary tensors usable in any mode.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = tuple(a.clone() for a in args)
                traced = torch.jit.trace(self.graph.eval(), example, check_trace=False)
                # optimize_numerics=False: freeze's folding passes (conv-bn, ...) change results in the last
                # bits, which can flip an int8 rounding; a trace must give exactly what eager gives.
                frozen = torch.jit.freeze(traced.eval(), optimize_numerics=False)
        except Exception as err:  # some graphs cannot be traced (data-dependent shapes, ...): stay on FX
            logger.debug("int8 graph runs unfrozen for inputs %s: %s: %s", [tuple(a.shape) for a in args], type(err).__name__, err)
            return FAILED

        def run(inputs: tuple) -> Any:
            with torch.no_grad():
                return frozen(*inputs)

        return run

    def train(self, mode: bool = True) -> "QuantizedGraph":
        self._traces.clear()
        return super().train(mode)


def _forget_traces(module: QuantizedGraph, incompatible_keys: Any) -> None:
    # A frozen trace holds the old weights as constants: new weights need a new trace.
    module._traces.clear()
