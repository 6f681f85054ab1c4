"""A transformer block's `LayerNorm(dense(x) + residual)` runs as one op (`_fused_norm`): ATen's LayerNorm
steps on the int8 layer's output, found by structure, checked on a real call with torch's ops moved into
the blocks, and refused where a block computes something else."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pdo_hub.optimizers.methods import _token_int8_kernel
from pdo_hub.optimizers.methods._fused_norm import _AddNorm, fuse_norms, unfuse_norms
from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear
from pdo_hub.optimizers.methods._traces import FAILED

pytestmark = pytest.mark.skipif(_token_int8_kernel.op() is None, reason="needs pdo-hub's kernel library (a C++ compiler)")


def _layer(k: int, n: int, seed: int) -> TokenInt8Linear:
    torch.manual_seed(seed)
    return TokenInt8Linear.from_float(nn.Linear(k, n))


class Output(nn.Module):
    """transformers' BertSelfOutput / BertOutput; `residual_after_norm` moves the add past the norm."""

    def __init__(self, k: int, n: int, seed: int, residual_after_norm: bool = False) -> None:
        super().__init__()
        self.dense, self.LayerNorm, self.dropout = _layer(k, n, seed), nn.LayerNorm(n, eps=1e-12), nn.Dropout(0.1)
        with torch.no_grad():
            self.LayerNorm.weight.uniform_(0.5, 1.5)
            self.LayerNorm.bias.uniform_(-0.5, 0.5)
        self.residual_after_norm = residual_after_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        if self.residual_after_norm:
            return self.LayerNorm(hidden_states) + input_tensor
        return self.LayerNorm(hidden_states + input_tensor)


class Block(nn.Module):
    """An attention-output block then a feed-forward block, as in one BERT layer."""

    def __init__(self, residual_after_norm: bool = False) -> None:
        super().__init__()
        self.attention_output = Output(64, 64, 1)
        self.up = _layer(64, 256, 2)
        self.output = Output(256, 64, 3, residual_after_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_output(x, x)
        return self.output(torch.relu(self.up(h)), h)


# ATen's LayerNorm steps, but its row moments round differently in the last bit: float rounding, on
# widths on and off the vector grid, for one row, a few, and enough rows to split across threads.
@pytest.mark.parametrize("m", [1, 8, 600])
@pytest.mark.parametrize("k,n", [(384, 384), (96, 200)])
def test_the_op_is_layer_norm_of_the_layer_output_plus_the_residual(m, k, n):
    layer = _layer(k, n, seed=m + n)
    generator = torch.Generator().manual_seed(m)
    x, residual = torch.randn(1, m, k, generator=generator) * 3, torch.randn(1, m, n, generator=generator) * 5
    weight, bias = torch.rand(n, generator=generator) + 0.5, torch.randn(n, generator=generator)
    packed, sums = _token_int8_kernel.packed_weights(layer, layer.weight_t)
    fused = torch.ops.pdo_hub.per_token_int8_linear_add_norm(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias,
                                                             packed, sums, residual, weight, bias, 1e-12)
    expected = torch.nn.functional.layer_norm(layer(x) + residual, (n,), weight, bias, 1e-12)
    assert fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=0, atol=2e-5)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        torch.ops.pdo_hub.per_token_int8_linear_add_norm(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias,
                                                         packed, sums, residual[..., 1:], weight, bias, 1e-12)


def test_add_norm_blocks_are_fused_checked_and_traced_as_one_op():
    model = Block().eval()
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        unfused = model(x)
        output, fused = fuse_norms(model, lambda: model(x), unfused)
        assert fused == 2
        assert all(isinstance(m.__dict__.get("forward"), _AddNorm) for m in (model.attention_output, model.output))
        assert torch.equal(output, model(x))  # the fused call's outputs, as later calls give them
        torch.testing.assert_close(output, unfused, rtol=0, atol=1e-4)
        traced = torch.jit.freeze(torch.jit.trace(model, (x,), check_trace=False))
        graph = str(traced.graph)
        assert "aten::layer_norm" not in graph and graph.count("pdo_hub::per_token_int8_linear_add_norm") == 2
        assert torch.equal(traced(x), model(x))
        model.train()  # dropout active: the block's own forward runs
        assert not torch.equal(model(x), model(x))
        model.eval()
        unfuse_norms(model.modules())
        assert torch.equal(model(x), unfused)


def test_a_block_that_adds_its_residual_after_the_norm_is_not_fused():
    # Same children, same call: only the check on a real call tells this block from BERT's.
    model = Block(residual_after_norm=True).eval()
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        unfused = model(x)
        output, fused = fuse_norms(model, lambda: model(x), unfused)
        assert fused == 0 and output is unfused
        assert not any("forward" in m.__dict__ for m in model.modules())
        assert torch.equal(model(x), unfused)


def test_a_dynamic_minilm_style_encoder_fuses_its_blocks_on_the_first_call(tmp_path):
    from transformers import BertConfig, BertModel

    from helpers import apply_method

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    model = BertModel(config).eval()
    ids = torch.randint(5, 200, (1, 12))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    optimized, _ = apply_method("dynamic", model, x)
    with torch.inference_mode():
        first = optimized(**x).last_hidden_state
        blocks = [m for m in optimized.modules() if isinstance(m.__dict__.get("forward"), _AddNorm)]
        assert len(blocks) == 2 * config.num_hidden_layers
        assert {type(m).__name__ for m in blocks} == {"BertSelfOutput", "BertOutput"}
        assert torch.equal(optimized(**x).last_hidden_state, first)  # the second call builds the frozen trace
        traces = optimized.forward.traces
        assert traces and FAILED not in traces, "the fused blocks must not keep the model off its trace"
        assert torch.equal(optimized(**x).last_hidden_state, first)
        unfuse_norms(optimized.modules())
        unfused = type(optimized).forward(optimized, **x).last_hidden_state
    assert torch.nn.functional.cosine_similarity(first.flatten(), unfused.flatten(), dim=0) > 0.999
