"""Dynamic int8 Linear layers with higher fidelity than torch.ao's default x86 path.

torch.ao's `DynamicQuantizedLinear` always quantizes activations to 7 bits (`reduce_range=True`, a
guard against int16 overflow on CPUs without VNNI) with one scale per tensor. On all-MiniLM-L6-v2
that costs cosine 0.979 (measured here). Two better layers:

- `FullRangeDynamicLinear`: the same fbgemm kernel and packed weights with 8-bit activations
  (cosine 0.994, as fast).
- `TokenInt8Linear`: one activation scale per token (row) and per-channel weights, an int8 GEMM
  (cosine 0.997). Outlier tokens no longer crush the resolution of every other token, which is what
  hurts transformer FFN outputs. It runs as one compiled op (`_token_int8_kernel`: its own VNNI GEMM
  for short inputs, oneDNN's `torch._int_mm` for long ones), or as ATen ops where that cannot be built.
  Built `asymmetric`, each token also gets its own zero point: its 256 levels span [min(row, 0),
  max(row, 0)] instead of [-max|row|, max|row|], half of which a row after GELU never uses. Simulated on
  all-MiniLM-L6-v2 (every Linear at 7-bit weights, 120 prose and 40 everyday sentences), the embedding
  loss (1 - cosine) was 0.0027 / 0.0020 asymmetric, 0.0041 / 0.0036 symmetric and 0.0079 / 0.0072 with
  fbgemm's one asymmetric scale per tensor (a one-off check).

Full-range int8 on both sides is exact only on CPUs with VNNI (`pdo_hub.core.cpu`): elsewhere the
kernels' int16 pair sums saturate. Built `portable` (the default, see `_int8_isa`), both layers keep
|weights| <= `PORTABLE_MAX` (7 bits), so no pair of products can overflow on any x86 CPU: fbgemm
multiplies u8 activations by s8 weights, and oneDNN's s8 x s8 GEMM shifts the activations to u8 too,
except in its AVX-512 GEMV (one output column), which shifts the weights; there `TokenInt8Linear` keeps
its activations on 7 bits as well (measured with torch 2.14's oneDNN capped to AVX2 and AVX512_CORE,
1-8 threads). The cost on
all-MiniLM-L6-v2: sentence-embedding cosine 0.9967 instead of 0.9975, at the same speed (same kernels).
Both store plain tensors (or torch.ao packed params) that pdo-hub's tensor codec serializes.
"""

from __future__ import annotations

import threading

import torch
import torch.nn as nn

from . import _token_int8_kernel
from ._torch_ao import quiet_torch_ao

with quiet_torch_ao():
    from torch.ao.nn.quantized.dynamic import Linear as _DynamicLinear
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

_PACKING = threading.Lock()

#: Largest |int8 value| of a portable operand: 255 x 64 x 2 = 32640 fits an int16 pair sum (32767).
PORTABLE_MAX = 64
FULL_MAX = 127
#: The activation `levels` of asymmetric rows (8-bit unsigned, a zero point per row); 1-127: symmetric.
ASYMMETRIC = 255


class FullRangeDynamicLinear(_DynamicLinear):
    """torch.ao dynamic int8 Linear with 8-bit (not 7-bit) activation quantization."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "FullRangeDynamicQuantizedLinear"

    @classmethod
    def portable_from_float(cls, linear: nn.Linear) -> "FullRangeDynamicLinear":
        """8-bit activations with weights on `PORTABLE_MAX` levels per side (7-bit), exact without VNNI."""
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-12) / PORTABLE_MAX
        with quiet_torch_ao():  # quantized dtypes announce their deprecation on every call
            new = cls(linear.in_features, linear.out_features, bias_=linear.bias is not None, dtype=torch.qint8)
            quantized = torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            new.set_weight_bias(quantized, None if linear.bias is None else linear.bias.detach().float())
        return new


class LazyPackedParams(LinearPackedParams):
    """int8 weights that fbgemm packs on first use instead of when they are set.

    A cache-hit load sets every layer's weights; packing all-MiniLM-L6-v2's fbgemm layers there was
    half of the load call. The first forward packs them instead: in a loaded variant that is the
    background warm-up's eager reference call, which always runs before a trace is built, so no trace
    ever sees a pending weight. Threads that race to pack one layer pack it once (`_PACKING`).
    """

    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        with _PACKING:
            self.__dict__.pop("_packed_params", None)
            self.__dict__["_pending"] = (weight, bias)

    def __getattr__(self, name: str):
        if name == "_packed_params":
            with _PACKING:
                if "_packed_params" not in self.__dict__:
                    weight, bias = self.__dict__.pop("_pending")
                    self.__dict__["_packed_params"] = torch.ops.quantized.linear_prepack(weight, bias)
                return self.__dict__["_packed_params"]
        return super().__getattr__(name)


#: `TokenInt8Linear.activation` values: the op's `activation` argument (`_fused_activation`).
NO_ACTIVATION, GELU = 0, 1
#: Per thread, the last output a layer with `activation == GELU` returned: the GELU module that follows
#: passes exactly that tensor through, and applies GELU to anything else (`_fused_activation`).
GELU_APPLIED = threading.local()


def per_token_int8_linear(owner: object, x: torch.Tensor, activation_levels: int, weight_t: torch.Tensor,
                          scale: torch.Tensor, bias: torch.Tensor | None, activation: int = NO_ACTIVATION) -> torch.Tensor:
    """(... x in) -> (... x out) in x's dtype: one activation scale per token (row), int8 GEMM, per-column
    dequantization, then `activation` (`GELU`: the erf GELU, applied in the op's epilogue).

    One compiled op where it could be built here (`_token_int8_kernel`; `owner`, the object holding
    `weight_t`, keeps its packed copy), else the same arithmetic in ATen ops.
    """
    fused = _token_int8_kernel.op() if x.device.type == "cpu" else None
    if fused is not None:
        return fused(x, activation_levels, weight_t, scale, bias, *_token_int8_kernel.packed_weights(owner, weight_t), activation)
    y = aten_per_token_int8_linear(x.reshape(-1, weight_t.shape[0]), activation_levels, weight_t, scale, bias)
    y = y.reshape(*x.shape[:-1], weight_t.shape[1]).to(x.dtype)
    return torch.nn.functional.gelu(y) if activation == GELU else y


def aten_per_token_int8_linear(rows: torch.Tensor, activation_levels: int, weight_t: torch.Tensor, scale: torch.Tensor,
                               bias: torch.Tensor | None) -> torch.Tensor:
    """`per_token_int8_linear` in ATen ops: the reference the compiled kernel matches bit for bit."""
    rows = rows.float()
    if activation_levels == ASYMMETRIC:
        low, high = rows.amin(1, keepdim=True).clamp(max=0), rows.amax(1, keepdim=True).clamp(min=0)
        row_scale = (high - low).clamp(min=1e-12) / ASYMMETRIC
        zero_point = (-low / row_scale).round_()
        unsigned = (rows / row_scale).round_().add_(zero_point).clamp_(0, ASYMMETRIC)
        # _int_mm multiplies signed bytes: (q - 128) w, then the zero point's share, (z - 128) x column sums, off.
        sums = torch._int_mm(unsigned.sub_(128).to(torch.int8), weight_t)
        sums -= (zero_point.to(torch.int32) - 128) * weight_t.sum(0, dtype=torch.int32)
    else:
        row_scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / activation_levels
        sums = torch._int_mm((rows / row_scale).round_().to(torch.int8), weight_t)  # CPU kernel; dynamic is a CPU-only method
    y = sums.float().mul_(row_scale).mul_(scale)
    return y if bias is None else y.add_(bias)


class TokenInt8Linear(nn.Module):
    """Per-token dynamic int8 activations x per-output-channel int8 weights, int32 accumulation.

    Buffers: `weight_t` (in x out int8, transposed for `_int_mm`), `scale` (out), `bias` (out
    or empty). The constructor leaves them uninitialised (`from_float` or a state-dict load fills
    them): zero-filling MiniLM's tables on every cache-hit load cost ~200 ms. `portable`: weights on
    `PORTABLE_MAX` levels per side instead of 127, and activations too for a single output (structure,
    so the recipe records it). `asymmetric`: activations with a zero point per token (`ASYMMETRIC`),
    except a portable layer's single output column: oneDNN's GEMV there widens the weights, not the
    activations, and keeps them on `PORTABLE_MAX` symmetric levels. `shared_input`: the `_shared_input.SharedInput` this layer's calls go
    through when it has siblings reading the same input, and `activation` the GELU it applies for the
    module that follows it (`_fused_activation`); both set by `FastForward`, never saved.
    """

    shared_input = None
    activation = NO_ACTIVATION

    def __init__(self, in_features: int, out_features: int, bias: bool = True, portable: bool = False,
                 asymmetric: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.has_bias = bias  # a Python bool, not `bias.numel()`: a frozen trace must not see a tensor-valued branch
        self.portable, self.asymmetric = portable, asymmetric
        # Python numbers: trace constants. One output column runs oneDNN's GEMV, which widens the weights.
        self.levels = PORTABLE_MAX if portable else FULL_MAX
        gemv = portable and out_features == 1
        self.activation_levels = PORTABLE_MAX if gemv else ASYMMETRIC if asymmetric else FULL_MAX
        self.register_buffer("weight_t", torch.empty(in_features, out_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features))
        self.register_buffer("bias", torch.empty(out_features if bias else 0))

    @classmethod
    def from_float(cls, linear: nn.Linear, portable: bool = False, asymmetric: bool = False) -> "TokenInt8Linear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, portable=portable, asymmetric=asymmetric)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-12) / new.levels  # symmetric: zero stays exactly zero
        new.weight_t.copy_((weight / scale[:, None]).round().clamp(-new.levels, new.levels).to(torch.int8).t())
        new.scale.copy_(scale)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().float())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input is not None:
            return self.shared_input.output(self, x)
        activation = self.activation  # read once: another thread may fuse or unfuse meanwhile
        out = per_token_int8_linear(self, x, self.activation_levels, self.weight_t, self.scale, self._bias(), activation)
        if activation == GELU:
            GELU_APPLIED.tensor = out
        return out

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """`norm(self(x) + residual)` as one op of the kernel library (`_fused_norm`; float32 on CPU, the library built)."""
        packed, sums = _token_int8_kernel.packed_weights(self, self.weight_t)
        return torch.ops.pdo_hub.per_token_int8_linear_add_norm(x, self.activation_levels, self.weight_t, self.scale, self._bias(),
                                                                packed, sums, residual, norm.weight, norm.bias, norm.eps)

    def _bias(self) -> torch.Tensor | None:
        return self.bias if self.has_bias else None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # New weights: the group's concatenated copies of its members' weights, and the packed copy, are stale.
        self.__dict__.pop("_packed_weights", None)
        if self.shared_input is not None:
            for member in self.shared_input.members:
                member.shared_input = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per_token_activations={'asymmetric' if self.activation_levels == ASYMMETRIC else 'symmetric'}, portable={self.portable}"
