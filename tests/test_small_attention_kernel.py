"""The one-op attention kernel for short inputs (`_small_attention_kernel.cpp`): the same attention as the
plain ops it replaces (to float rounding), for every mask layout, eagerly and inside one frozen trace."""

from __future__ import annotations

import pytest
import torch

from pdo_hub.optimizers.methods import _small_attention
from pdo_hub.optimizers.methods._small_attention import SMALL_SCORES, _attend

LOWEST = torch.finfo(torch.float32).min

pytestmark = pytest.mark.skipif(not _small_attention.fused_kernel_here(),
                                reason="needs a C++ compiler and an AVX-512 CPU for pdo-hub's kernel library")


def _heads(batch: int, heads: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    """(batch, heads, tokens, dim) laid out as transformers passes it: a transposed view of (batch, tokens, heads, dim)."""
    return torch.randn(batch, tokens, heads, dim, generator=torch.Generator().manual_seed(seed)).transpose(1, 2)


def _padding_mask(batch: int, queries: int, keys: int, lengths: list[int]) -> torch.Tensor:
    """transformers' boolean SDPA mask: (batch, 1, queries, keys), True where a real key is attended."""
    real = torch.arange(keys)[None, :] < torch.tensor(lengths)[:, None]
    return real[:, None, None, :].expand(batch, 1, queries, keys)


@pytest.mark.parametrize("batch, heads, queries, keys, dim, value_dim, lengths", [
    (1, 12, 8, 8, 32, 32, None),  # a batch-1 request, nothing padded
    (3, 12, 13, 13, 32, 32, [13, 5, 1]),  # padded batch: one row attends a single key
    (2, 4, 1, 33, 16, 16, [33, 20]),  # one query, key count off the 16-lane grid
    (1, 2, 17, 40, 24, 40, [31]),  # head and value widths off the grid
])
def test_the_kernel_gives_the_plain_ops_attention_within_float_rounding(batch, heads, queries, keys, dim, value_dim, lengths):
    query, key = _heads(batch, heads, queries, dim, 1), _heads(batch, heads, keys, dim, 2)
    value = _heads(batch, heads, keys, value_dim, 3)
    mask = None if lengths is None else _padding_mask(batch, queries, keys, lengths)
    got = torch.ops.pdo_hub.small_attention(query, key, value, mask, dim ** -0.5, LOWEST)
    expected = _attend(query, key, value, mask, dim ** -0.5, SMALL_SCORES, LOWEST)
    assert got.shape == expected.shape == (batch, queries, heads, value_dim) and got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=2e-5)


def test_a_query_with_every_key_masked_averages_the_values_as_the_plain_ops_do():
    query, key, value = _heads(1, 2, 3, 16, 4), _heads(1, 2, 5, 16, 5), _heads(1, 2, 5, 16, 6)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    mask[..., 1, :] = False
    got = torch.ops.pdo_hub.small_attention(query, key, value, mask, 0.25, LOWEST)
    torch.testing.assert_close(got, _attend(query, key, value, mask, 0.25, SMALL_SCORES, LOWEST), atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(got[0, 1], value[0].mean(1), atol=2e-6, rtol=2e-5)


def test_a_wrong_dtype_or_shape_is_refused_with_what_is_wrong():
    query = _heads(1, 2, 3, 16, 7)
    with pytest.raises(RuntimeError, match="float32 only"):
        torch.ops.pdo_hub.small_attention(query.double(), query.double(), query.double(), None, 0.25, LOWEST)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        torch.ops.pdo_hub.small_attention(query, _heads(1, 3, 3, 16, 8), query, None, 0.25, LOWEST)


def test_the_meta_kernel_gives_the_output_shape():
    query, value = torch.empty(2, 12, 7, 32, device="meta"), torch.empty(2, 12, 9, 40, device="meta")
    out = torch.ops.pdo_hub.small_attention(query, torch.empty(2, 12, 9, 32, device="meta"), value, None, 0.1, LOWEST)
    assert out.shape == (2, 7, 12, 40) and out.device.type == "meta"


def test_one_trace_runs_the_kernel_for_short_inputs_and_the_plain_ops_above_the_threshold():
    """The size test is a branch of the scripted function inside the trace, so one trace serves both sides."""
    scripted = _small_attention._scripted(True)
    graph = str(scripted.inlined_graph)
    assert "pdo_hub::small_attention" in graph and "aten::softmax" in graph
    for batch, tokens in ((1, 8), (9, 128)):  # 12x8x8 scores: the kernel; 9x12x128x128: past FUSED_SCORES
        assert (batch * 12 * tokens * tokens <= _small_attention.FUSED_SCORES) == (tokens == 8)
        query, key, value = (_heads(batch, 12, tokens, 32, seed) for seed in (9, 10, 11))
        mask = _padding_mask(batch, tokens, tokens, [tokens] * batch)
        args = (query, key, value, mask, 32 ** -0.5, SMALL_SCORES, LOWEST, _small_attention.FUSED_SCORES)
        assert torch.equal(scripted(*args), _small_attention._attend_fused(*args))


def test_without_the_kernel_the_model_runs_the_plain_ops(monkeypatch):
    monkeypatch.setattr(_small_attention, "fused_kernel_here", lambda: False)
    calls = []
    monkeypatch.setattr(_small_attention, "_attend_fused", lambda *a: calls.append(1))

    class Module(torch.nn.Module):
        training = False

    query = _heads(1, 12, 8, 32, 12)
    output, _ = _small_attention.small_cpu_attention(Module(), query, query, query, None)
    assert calls == [] and output.shape == (1, 8, 12, 32)
