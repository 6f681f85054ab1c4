"""Attention for small CPU inputs as plain matmul-softmax-matmul, SDPA otherwise.

On CPU, torch's SDPA (flash kernel) is slower than the three plain ops while the score matrix stays
small, and much faster once it outgrows the cache (`scripts/bench_cpu_kernels.py`, 2 threads, 12
heads, head dim 32, SDPA -> plain per call: batch 1 x seq 128 256 -> 199 us, 16 x 32 443 -> 237 us,
50 x 13 1491 -> 806 us; but 8 x 128 2704 -> 5555 us, and above 12x128x128 scores it varies from run
to run). The whole-model effect is in `scripts/bench_quantization.py` (MiniLM `dynamic`).

`install(model)` registers this function with transformers' `AttentionInterface` and switches a
model that runs on "sdpa" to it. It is a pure function of the input shapes (a frozen trace is per
shape, so the branch is fixed per trace); anything it does not handle (training, dropout, causal or
grouped-query attention, position bias, softcap, float masks, non-CPU devices) goes to transformers'
own SDPA function unchanged. `_attn_implementation` is not written to config.json, so saved and
pushed models still load with stock transformers.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)
NAME = "pdo_small_cpu"
SMALL_SCORES = 12 * 128 * 128  # largest score matrix (elements) measured faster than SDPA here


def small_cpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        query.device.type == "cpu" and not module.training and dropout == 0.0
        and not (is_causal if is_causal is not None else getattr(module, "is_causal", False))
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
        and (attention_mask is None or attention_mask.dtype == torch.bool)
        and query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2] <= SMALL_SCORES
    )
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:  # transformers' SDPA masks: True = attend
        # Additive, built at mask size: masked_fill over the broadcast scores cost 60 us a layer.
        blocked = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
        scores.add_(blocked.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min))
    output = torch.matmul(scores.softmax(-1), value)
    return output.transpose(1, 2).contiguous(), None


def install(model: nn.Module) -> bool:
    """Switch a transformers model on "sdpa" attention to `small_cpu_attention`; True if switched."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, small_cpu_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # same boolean masks as SDPA
        model.set_attn_implementation(NAME)
    except Exception as err:  # an older/newer transformers without these hooks: keep SDPA
        logger.debug("small-input attention not installed: %s: %s", type(err).__name__, err)
        return False
    return config._attn_implementation == NAME
