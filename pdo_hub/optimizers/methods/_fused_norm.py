"""A transformer block's output projection, residual add and LayerNorm as one op.

BERT-style encoders end each attention and feed-forward block with `LayerNorm(dense(x) + residual)`
(transformers' `BertSelfOutput` / `BertOutput` and their copies in other encoders). At batch-1 request
sizes torch's LayerNorm costs more than its arithmetic: it wakes the second thread for even 8 rows.
Fused behind the per-token int8 GEMM (`pdo_hub::per_token_int8_linear_add_norm`), the add and the norm
run on the GEMM's output while it is in cache, on one thread for small inputs: all-MiniLM-L6-v2 ran
1.13 / 1.07 / 1.07 / 0.94 / 1.09x at 8 / 16 / 32 / 64 / 128 tokens (`python scripts/bench_fused_gelu.py
--op norm`, 2026-12-02, 2 threads, AMD EPYC with VNNI; one run, the 64-token figure within its noise).

The blocks are found by structure: a module whose children are a `dense` per-token int8 layer (not
grouped with siblings, no fused activation), a `LayerNorm` over its output, and at most a `dropout`,
called as `(hidden_states, input_tensor)`. Before the op is used the blocks are checked: the call runs
again with each block computing `layer_norm(dense(hidden_states) + input_tensor)` itself in torch's
ops (the same arithmetic as unfused if the block is what its structure says, only moved), and must
give the very same outputs; a block whose forward does something else (another order, another
residual) changes them, and nothing is fused. The op computes ATen's LayerNorm steps but its row
moments round differently in the last bit, so a fused model agrees with the unfused one to float
rounding, not bit for bit (as the fused GELU and the one-op attention do; all-MiniLM-L6-v2's outputs
at cosine 0.9994-1.0 against unfused, its cosine against FP32 unchanged at 24 tokens). Eager calls and
traces both take the op, so a trace still equals eager. Nothing is saved: the state dict and the
module tree are unchanged, and `unfuse_norms` restores the blocks' own forwards. Training mode, other
dtypes or shapes run the block's own forward. Only where the kernel library is built.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from . import _token_int8_kernel
from ._int8_linear import NO_ACTIVATION, TokenInt8Linear
from ._traces import identical


def fuse_norms(model: nn.Module, run: Callable[[], Any], reference: Any) -> tuple[Any, int]:
    """Fuse each `LayerNorm(dense(x) + residual)` block of `model`; (the call's outputs, blocks fused).

    `reference`: the outputs of an unfused call of `run()`. Runs `run()` once to check the blocks (with
    torch's ops moved into them) and, when they pass, once fused (its outputs are returned).
    """
    if _token_int8_kernel.op() is None:
        return reference, 0
    blocks = [m for m in model.modules() if _is_add_norm_block(m)]
    if not blocks:
        return reference, 0
    for block in blocks:
        block.forward = _AddNorm(block, fused=False)
    same = identical(run(), reference)
    for block in blocks:
        if same:
            block.forward = _AddNorm(block, fused=True)
        else:
            del block.__dict__["forward"]
    if not same:
        return reference, 0
    return run(), len(blocks)


def unfuse_norms(modules) -> None:
    """Undo `fuse_norms` on these modules (idempotent)."""
    for module in modules:
        if isinstance(module.__dict__.get("forward"), _AddNorm):
            del module.__dict__["forward"]


class _AddNorm:
    """A block's forward: `layer_norm(dense(hidden_states) + input_tensor)`, in one op when `fused`, else in
    torch's ops (the check)."""

    def __init__(self, block: nn.Module, fused: bool) -> None:
        self.block, self.fused = block, fused

    def __call__(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        block = self.block
        dense, norm = block.dense, block.LayerNorm
        if block.training or not _fits(dense, hidden_states, input_tensor):
            return type(block).forward(block, hidden_states, input_tensor)
        if not self.fused:
            return torch.nn.functional.layer_norm(dense(hidden_states) + input_tensor, norm.normalized_shape, norm.weight,
                                                  norm.bias, norm.eps)
        return dense.add_norm(hidden_states, input_tensor, norm)


def _fits(dense: nn.Module, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> bool:
    """The op serves this call: the layer is still an ungrouped int8 layer (code may swap layers later), float32 on CPU."""
    if not (_plain_int8(dense) and hidden_states.device.type == "cpu" and hidden_states.dtype == input_tensor.dtype == torch.float32):
        return False
    # While tracing, sizes are traced values (comparing them would bake this call's shape into the trace);
    # the op checks the residual's shape itself.
    return torch.jit.is_tracing() or input_tensor.shape == (*hidden_states.shape[:-1], dense.out_features)


def _plain_int8(layer: Any) -> bool:
    return isinstance(layer, TokenInt8Linear) and layer.shared_input is None and layer.activation == NO_ACTIVATION


def _is_add_norm_block(module: nn.Module) -> bool:
    if "forward" in module.__dict__:
        return False  # already fused, or another instance-level forward
    children = dict(module.named_children())
    dense, norm = children.get("dense"), children.get("LayerNorm")
    if not _plain_int8(dense):
        return False
    if type(norm) is not nn.LayerNorm or not norm.elementwise_affine or norm.bias is None:
        return False
    if tuple(norm.normalized_shape) != (dense.out_features,):
        return False
    return set(children) <= {"dense", "LayerNorm", "dropout"} and isinstance(children.get("dropout", nn.Dropout()), nn.Dropout)
