"""A per-token int8 Linear and the exact GELU after it run as one op (`_fused_activation`): the same GELU
as ATen's vectorized kernel, found by watching a real call, and undone where the Linear's output has
another reader."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn as nn

from pdo_hub.optimizers.methods import _token_int8_kernel
from pdo_hub.optimizers.methods._fast_forward import accelerate
from pdo_hub.optimizers.methods._fused_activation import fuse_gelus, layers_alone, unfuse
from pdo_hub.optimizers.methods._int8_linear import GELU, NO_ACTIVATION, TokenInt8Linear, aten_per_token_int8_linear

pytestmark = pytest.mark.skipif(_token_int8_kernel.op() is None, reason="needs pdo-hub's kernel library (a C++ compiler)")


def _layer(k: int, n: int, seed: int) -> TokenInt8Linear:
    torch.manual_seed(seed)
    return TokenInt8Linear.from_float(nn.Linear(k, n))


def _aten_gelu(y: torch.Tensor) -> torch.Tensor:
    # ATen's own vectorized GELU: what torch computes with oneDNN off (with it on, oneDNN's erf runs).
    with torch.backends.mkldnn.flags(enabled=False):
        return torch.nn.functional.gelu(y)


# Up to 32 rows the op computes GELU in its epilogue, above in a pass after the GEMM (on both GEMM paths: the
# op's VNNI loop up to 512, oneDNN's above): both by ATen's vectorized formula, bit for bit what torch computes
# with oneDNN off where ATen vectorizes every element (1536 wide), to float rounding on a width off the grid
# (ATen takes a tensor's last elements past a multiple of 32 through scalar std::erf). Never torch's default
# GELU, oneDNN's, which builds a primitive for every new shape.
@pytest.mark.parametrize("m", [1, 8, 32, 33, 513])
@pytest.mark.parametrize("k,n", [(384, 1536), (64, 37)])
def test_the_op_applies_atens_vectorized_gelu_at_every_size(m, k, n):
    layer = _layer(k, n, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3
    packed, sums = _token_int8_kernel.packed_weights(layer, layer.weight_t)
    fused = _token_int8_kernel.op()(x, 127, layer.weight_t, layer.scale, layer.bias, packed, sums, GELU)
    linear = aten_per_token_int8_linear(x, 127, layer.weight_t, layer.scale, layer.bias)
    expected = _aten_gelu(linear)
    if n % 32 == 0:
        assert torch.equal(fused, expected)
    else:
        torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(fused, aten_per_token_int8_linear(x, 127, layer.weight_t, layer.scale, layer.bias))
    with pytest.raises(RuntimeError, match="activation must be 0"):
        _token_int8_kernel.op()(x, 127, layer.weight_t, layer.scale, layer.bias, packed, sums, 7)


class FeedForward(nn.Module):
    """A transformer block's MLP: Linear -> GELU -> Linear, with `reads_twice` also adding the pre-activation values."""

    def __init__(self, reads_twice: bool = False) -> None:
        super().__init__()
        self.up, self.act, self.down = _layer(64, 256, 1), nn.GELU(), _layer(256, 64, 2)
        self.reads_twice = reads_twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.up(x)
        out = self.down(self.act(hidden))
        return out + hidden[..., :64] if self.reads_twice else out


def test_a_linear_read_only_by_gelu_is_fused_and_a_frozen_trace_holds_no_gelu():
    model = FeedForward().eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        unfused = model(x)
        output, pairs = fuse_gelus(model, lambda: model(x), unfused)
        assert pairs == 1 and model.up.activation == GELU and model.down.activation == NO_ACTIVATION
        assert torch.equal(output, model(x))  # the fused call's outputs, as later calls give them
        torch.testing.assert_close(output, unfused, rtol=1e-4, atol=1e-4)  # the op's GELU: float rounding
        traced = torch.jit.freeze(torch.jit.trace(model, (x,), check_trace=False))
        assert "aten::gelu" not in str(traced.graph) and "pdo_hub::per_token_int8_linear" in str(traced.graph)
        assert torch.equal(traced(x), model(x))
        # The fused layer called on its own, then the GELU module on another tensor: that tensor still gets GELU.
        model.up(x)
        other = torch.randn(3, 256)
        assert torch.equal(model.act(other), torch.nn.functional.gelu(other))
        unfuse(model.modules())
        assert model.up.activation == NO_ACTIVATION and "forward" not in model.act.__dict__
        assert torch.equal(model(x), unfused)


def test_a_linear_whose_output_has_another_reader_stays_unfused():
    model = FeedForward(reads_twice=True).eval()
    x = torch.randn(4, 64)
    with torch.no_grad():
        unfused = model(x)
        output, pairs = fuse_gelus(model, lambda: model(x), unfused)
    assert pairs == 0 and model.up.activation == NO_ACTIVATION and "forward" not in model.act.__dict__
    assert torch.equal(output, unfused)


def test_fast_forward_fuses_on_its_first_call_and_unfuses_for_new_weights():
    model = accelerate(FeedForward().eval())
    x = torch.randn(1, 7, 64)
    with torch.inference_mode():
        first = model(x)
        assert model.up.activation == GELU
        for _ in range(3):  # eager, then the frozen trace
            assert torch.equal(model(x), first)
    model.load_state_dict(copy.deepcopy(FeedForward()).state_dict())
    assert model.up.activation == NO_ACTIVATION and "forward" not in model.act.__dict__


def test_threads_calling_while_the_first_call_fuses_get_gelu_exactly_once():
    model = accelerate(FeedForward().eval())
    x = torch.randn(1, 9, 64)
    with torch.inference_mode():
        reference = copy.deepcopy(model)(x)  # a fused copy, probed by its own first call
    results, errors = [], []

    def call():
        try:
            with torch.inference_mode():
                for _ in range(20):
                    results.append(model(x))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # GELU applied twice or not at all would be far off; within rounding, every call agrees.
    for result in results:
        torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)


def test_an_export_reading_a_fused_variant_gets_the_linear_weights_without_gelu():
    from pdo_hub.export._dense import densify_into

    model = accelerate(FeedForward().eval())
    with torch.inference_mode():
        model(torch.randn(1, 3, 64))
    assert model.up.activation == GELU
    skeleton = nn.Sequential()
    skeleton.up, skeleton.down = nn.Linear(64, 256), nn.Linear(256, 64)
    assert densify_into(model, skeleton)["up"] == "probed"
    # The int8 layer's own weights, dequantized: no GELU in them.
    torch.testing.assert_close(skeleton.up.weight, (model.up.weight_t.float() * model.up.scale).t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(skeleton.up.bias, model.up.bias, rtol=1e-5, atol=1e-6)
    with layers_alone(model):
        assert model.up.activation == NO_ACTIVATION
    assert model.up.activation == GELU
