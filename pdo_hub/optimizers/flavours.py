"""Which int8 flavour fits a model: static for convolutional networks, dynamic for Linear/LSTM-heavy ones.

Measured with the bundled all-MiniLM-L6-v2 and the digits-trained ResNet-18: `static` is the fast,
faithful int8 of a CNN (per-channel weights, calibrated activations, conv-bn-relu fused) and runs
MiniLM only layer by layer (cosine 0.955 at seq 128, slower than `dynamic`); `dynamic` is the int8 of a
transformer (4x faster, cosine 0.997) but leaves a CNN's convolutions in float, so it saves little
there. A preset names one quantization method for every model, so the optimizer also tries the
flavour that fits when the configured one belongs to the other family (see `selection`).

The family is decided by where the work is: the multiply-adds of convolutions against those of
Linear and recurrent layers on the example input (work, not parameters: a VGG's Linear head holds most
of its parameters but a small share of its time).
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from .inputs import Inputs
from .modules import multiply_adds

STATIC_FAMILY = ("static", "fx", "qat")  # calibrated int8 activations: graph or layer-by-layer static
DYNAMIC_FAMILY = ("dynamic", "quanto_int8")  # activations quantized at run time (or kept float)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass(frozen=True)
class Fit:
    """The quantization flavour that fits a model, and the measurement behind it."""

    method: str  # "static" or "dynamic"
    conv_share: float  # share of the multiply-adds in convolutions

    @property
    def reason(self) -> str:
        if self.method == "static":
            return f"convolutions do {100 * self.conv_share:.0f}% of its multiply-adds, which static int8 runs fastest"
        return f"Linear/recurrent layers do {100 * (1 - self.conv_share):.0f}% of its multiply-adds, which dynamic int8 serves best"


def family(method: str) -> str | None:
    """'static' or 'dynamic' for a quantization method name (None for other methods)."""
    if method in STATIC_FAMILY:
        return "static"
    if method in DYNAMIC_FAMILY:
        return "dynamic"
    return None


def fitting_quantization(model: nn.Module, example: Inputs) -> Fit:
    """The int8 flavour that fits `model` on `example` (one forward pass with hooks)."""
    modules = {id(m): m for m in model.modules()}
    counts = multiply_adds(model, example)
    total = sum(counts.values())
    conv = sum(count for key, count in counts.items() if isinstance(modules.get(key), _CONVS))
    share = conv / total if total else 0.0
    return Fit("static" if share > 0.5 else "dynamic", share)
