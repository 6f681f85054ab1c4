"""A per-token int8 Linear followed by an exact GELU runs both in one op.

A transformer's feed-forward block is a Linear, a GELU, a Linear. At batch-1 request sizes torch's GELU
costs more than its arithmetic (all-MiniLM-L6-v2 at 8 tokens: ~25 us a call inside a frozen trace in a
one-off torch.profiler run, about a tenth of the request, most of it oneDNN's set-up for an 8 x 1536
tensor); inside the int8 op's epilogue it is a few microseconds of vector arithmetic on values still in
registers. Fused, the whole model is 1.09x faster at 8 tokens and 1.10x at 16 (scripts/bench_fused_gelu.py).

The pairs are found by watching one real eager call, as `_shared_input` finds siblings: a GELU module
(`nn.GELU` without approximation, or transformers' `GELUActivation` on `torch.nn.functional.gelu`),
called once, whose input is the very tensor that an ungrouped `TokenInt8Linear`, called once, returned.
No architecture names are assumed. Fused, the layer applies the GELU (`TokenInt8Linear.activation`) and
the GELU module passes through exactly the tensor that layer last returned in this thread
(`_int8_linear.GELU_APPLIED`), applying GELU to anything else: so a call that runs while another thread
fuses or unfuses (the background warm-up probes while the first requests run) gets GELU once, never
twice or not at all. Before that, the pairs are checked: the call runs again with each layer applying
torch's own GELU after its output (the same arithmetic as unfused, only moved), and must give the very
same outputs; if anything else also read a Linear's output, it now sees GELU's, and every pair is left
unfused. (Comparing the fused op's outputs instead cannot tell: an int8 model turns a last-bit change
into a different rounding of some later activation, and MiniLM's outputs then differ at cosine
0.9987.) Nothing is saved: the state dict and the module tree are unchanged, and `unfuse` (new weights,
a cleared trace cache) restores the modules as they were.

Numerics: for inputs of up to 32 tokens the op computes ATen's vectorized erf formula in its epilogue,
which is what torch's own GELU computes with oneDNN switched off; by default torch runs oneDNN's erf,
which differs in the last bits. Above 32 tokens the op runs the same formula in a pass over its output
rows after the GEMM (the epilogue was slower there), not torch's GELU: oneDNN builds a primitive for
every new tensor shape (2-3 ms at 992 x 1536 here), which the first pass over a corpus or a stream of
new lengths paid again and again (docs/benchmarks.md, "GELU without a primitive per shape"). So a fused
model agrees with the unfused one to float rounding, not bit for bit (as the one-op attention does),
and eager calls and traces both take the fused op, so a trace still equals eager. Only where the
kernel library is built (`_token_int8_kernel`): the ATen fallback would gain nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from . import _token_int8_kernel, _warm_up
from ._int8_linear import GELU, GELU_APPLIED, NO_ACTIVATION, TokenInt8Linear
from ._traces import identical


def fuse_gelus(model: nn.Module, run: Callable[[], Any], reference: Any) -> tuple[Any, int]:
    """Fuse each TokenInt8Linear -> exact GELU pair that one call of `run()` shows; (the call's outputs, pairs fused).

    `reference`: the outputs of an unfused call with the same inputs. Runs `run()` once to watch, and
    when there are pairs once to check them and once fused (its outputs are returned).
    """
    if _token_int8_kernel.op() is None:
        return reference, 0
    layers = [m for m in model.modules() if isinstance(m, TokenInt8Linear) and m.shared_input is None]
    gelus = [m for m in model.modules() if _is_exact_gelu(m)]
    if not layers or not gelus:
        return reference, 0
    returned: list[tuple[nn.Module, Any]] = []  # holds the tensors, so no id is reused during the call
    received: list[tuple[nn.Module, Any]] = []
    handles = [layer.register_forward_hook(lambda module, args, out: returned.append((module, out))) for layer in layers]
    handles += [gelu.register_forward_pre_hook(lambda module, args: received.append((module, args[0] if args else None)))
                for gelu in gelus]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    once = lambda calls: {id(m) for m, _ in calls if sum(other is m for other, _ in calls) == 1}  # noqa: E731
    single_layers, single_gelus = once(returned), once(received)
    producer = {id(out): layer for layer, out in returned if id(layer) in single_layers}
    pairs = [(producer[id(x)], gelu) for gelu, x in received if id(gelu) in single_gelus and id(x) in producer]
    if not pairs:
        return reference, 0
    # The check: torch's GELU moved into each layer (instance forwards), the same arithmetic as unfused.
    for layer, gelu in pairs:
        gelu.forward = _gelu_unless_applied  # first: until the layer tags its output, the module still applies GELU
        layer.forward = _ThenGelu(layer)
    checked = run()
    same = identical(checked, reference)  # else another reader of some layer's output saw GELU's
    for layer, gelu in pairs:
        del layer.__dict__["forward"]  # first: an untagged output gets its GELU from the module meanwhile
        if same:
            layer.activation = GELU
        else:
            del gelu.__dict__["forward"]
    if not same:
        return reference, 0
    return run(), len(pairs)  # the call's outputs as every later call gives them


class _ThenGelu:
    """A checked layer's forward: its own output, then torch's GELU, tagged for the GELU module that follows."""

    def __init__(self, layer: TokenInt8Linear) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.gelu(type(self.layer).forward(self.layer, x))
        GELU_APPLIED.tensor = out
        return out


@contextlib.contextmanager
def layers_alone(model: nn.Module) -> Iterator[None]:
    """Fused layers compute their Linear alone meanwhile (no GELU): for code that calls layers one by one,
    such as an export reading their effective weights. Their GELU modules then apply GELU themselves.

    A loaded model may be fusing on its background warm-up thread: that is waited for, and no first
    call of the model (`FastForward`'s probe) fuses anything until the block ends.
    """
    _warm_up.wait(model)
    fast = model.__dict__.get("forward")
    with getattr(fast, "probing", contextlib.nullcontext()):
        fused = [m for m in model.modules() if isinstance(m, TokenInt8Linear) and m.activation == GELU]
        for layer in fused:
            layer.activation = NO_ACTIVATION
        try:
            yield
        finally:
            for layer in fused:
                layer.activation = GELU


def unfuse(modules) -> None:
    """Undo `fuse_gelus` on these modules (idempotent)."""
    modules = list(modules)
    for module in modules:  # the layers first: a GELU module keeps passing through what they already returned
        if isinstance(module, TokenInt8Linear):
            module.activation = NO_ACTIVATION
    for module in modules:
        if module.__dict__.get("forward") is _gelu_unless_applied:
            del module.__dict__["forward"]


def _is_exact_gelu(module: nn.Module) -> bool:
    if module.__dict__.get("forward") is _gelu_unless_applied:
        return False  # already fused
    if type(module) is nn.GELU:
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is torch.nn.functional.gelu


def _gelu_unless_applied(x: torch.Tensor) -> torch.Tensor:
    """A fused GELU module's forward: the fused layer's output as it is, GELU of anything else."""
    if getattr(GELU_APPLIED, "tensor", None) is x:
        GELU_APPLIED.tensor = None
        return x
    return torch.nn.functional.gelu(x)
