"""Attention for small CPU inputs as plain matmul-softmax-matmul, SDPA otherwise.

On CPU, torch's SDPA (flash kernel) is slower than the three plain ops while the score matrix stays
small, and much faster once it outgrows the cache (`scripts/bench_cpu_kernels.py`, 2 threads, 12
heads, head dim 32, SDPA -> plain per call: batch 1 x seq 128 256 -> 199 us, 16 x 32 443 -> 237 us,
50 x 13 1491 -> 806 us; but 8 x 128 2704 -> 5555 us, and above 12x128x128 scores it varies from run
to run). The whole-model effect is in `scripts/bench_quantization.py` (MiniLM `dynamic`).

Where pdo-hub's kernel library is built (`_token_int8_kernel`; the attention op needs AVX-512), one op
computes the same attention for score matrices of up to `FUSED_SCORES` elements (batch 8 of 128 tokens):
faster there than both the plain ops, whose dispatch dominates at request sizes, and SDPA
(`_small_attention_kernel.cpp`; all-MiniLM-L6-v2 `dynamic` at batch 1 is 1.05-1.22x faster from 8 to
128 tokens: bench_small_attention.py). It agrees with the plain ops to float rounding, not bit for bit;
eager calls and traces both take it, so a trace still equals eager.

`install(model)` registers this function with transformers' `AttentionInterface` and switches a
model that runs on "sdpa" to it. Which of the two runs depends on the input shapes only, and a frozen
trace keeps that test as a branch, so one trace serves every shape; anything it does not handle (training, dropout, causal or
grouped-query attention, position bias, softcap, float masks, non-CPU devices) goes to transformers'
own SDPA function unchanged. `_attn_implementation` is not written to config.json, so saved and
pushed models still load with stock transformers.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
import torch.nn as nn

from . import _token_int8_kernel

logger = logging.getLogger(__name__)
NAME = "pdo_small_cpu"
SMALL_SCORES = 12 * 128 * 128  # largest score matrix (elements) measured faster than SDPA here
# Largest score matrix the one-op kernel runs: faster than the plain ops and SDPA up to here (batch 8 x 128
# tokens, batch 32 x 64; bench_cpu_kernels.py); as fast as SDPA at 32 x 128, slower at 1 x 512.
FUSED_SCORES = 8 * 12 * 128 * 128


def small_cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    supported = (
        query.device.type == "cpu" and not module.training and dropout == 0.0
        and not (is_causal if is_causal is not None else getattr(module, "is_causal", False))
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
        and (attention_mask is None or attention_mask.dtype == torch.bool)
    )
    if not supported:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    fused = fused_kernel_here()
    limits = (SMALL_SCORES, torch.finfo(query.dtype).min) + ((FUSED_SCORES,) if fused else ())
    # While tracing, the size tests must stay branches of the trace (one trace serves every shape);
    # TorchScript keeps a scripted function's control flow. Eagerly the same function runs as Python.
    attend = _scripted(fused) if torch.jit.is_tracing() else _attend_fused if fused else _attend
    return attend(query, key, value, attention_mask, float(scale), *limits), None


def fused_kernel_here() -> bool:
    """Whether pdo-hub's one-op attention kernel is built and loaded here (AVX-512 builds of `_token_int8_kernel`'s library)."""
    return _token_int8_kernel.op() is not None and _attention_op_built()


@functools.lru_cache(maxsize=1)
def _attention_op_built() -> bool:
    # Asked once the library is loaded (it stays loaded): a missing op costs an exception per look-up.
    return hasattr(torch.ops.pdo_hub, "small_attention")


def _attend_fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                  scale: float, small_scores: int, lowest: float, fused_scores: int) -> torch.Tensor:
    """`_attend`, with float32 score matrices of up to `fused_scores` elements computed by the one-op kernel."""
    if query.dtype == torch.float32 and query.size(0) * query.size(1) * query.size(2) * key.size(2) <= fused_scores:
        return torch.ops.pdo_hub.small_attention(query, key, value, attention_mask, scale, lowest)
    return _attend(query, key, value, attention_mask, scale, small_scores, lowest)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Optional[torch.Tensor],
            scale: float, small_scores: int, lowest: float) -> torch.Tensor:
    """Plain matmul-softmax-matmul attention up to `small_scores` score elements, SDPA above (both: boolean mask, True = attend)."""
    if query.size(0) * query.size(1) * query.size(2) * key.size(2) > small_scores:
        output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        return output.transpose(1, 2).contiguous()
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        # Additive, built at mask size: masked_fill over the broadcast scores cost 60 us a layer.
        blocked = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
        scores.add_(blocked.masked_fill_(~attention_mask, lowest))
    output = torch.matmul(scores.softmax(-1), value)
    return output.transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=2)
def _scripted(fused: bool):
    return torch.jit.script(_attend_fused if fused else _attend)


def always_masked(*args, **kwargs):
    """transformers' SDPA mask, never skipped when nothing is padded.

    transformers leaves the mask out of a call without padding (eagerly only: never while tracing), and
    SDPA without a mask takes another kernel, whose result differs in the last bits. A trace reused for
    such a call would then disagree with eager, and checking a trace against eager needs them identical.
    """
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def install(model: nn.Module) -> bool:
    """Switch a transformers model on "sdpa" attention to `small_cpu_attention`; True if switched."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, small_cpu_attention)
        AttentionMaskInterface.register(NAME, always_masked)  # SDPA's boolean masks
        model.set_attn_implementation(NAME)
    except Exception as err:  # an older/newer transformers without these hooks: keep SDPA
        logger.debug("small-input attention not installed: %s: %s", type(err).__name__, err)
        return False
    return config._attn_implementation == NAME
