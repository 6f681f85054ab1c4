"""Tensor-factorized convolutions: Tucker-2 and HLRTF, each a chain of plain `nn.Conv2d` children.

Both keep the replaced conv's attributes (`in_channels`, `out_channels`, `kernel_size`, `stride`, ...)
and run the spatial kh x kw part with the original stride/padding/dilation. Because the first 1x1 conv
has no bias, zero padding commutes with it, so the chain computes exactly the reconstructed kernel.
Children are plain convs, so a later int8 step quantizes them like any other conv.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _FactorizedConv(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    def _spatial(self, channels_in: int, channels_out: int, groups: int = 1) -> nn.Conv2d:
        return nn.Conv2d(
            channels_in, channels_out, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=groups, bias=False,
        )


class TuckerConv2d(_FactorizedConv):
    """Tucker-2: 1x1 conv Cin -> r_in, kh x kw core conv r_in -> r_out, 1x1 conv r_out -> Cout (+ bias)."""

    def __init__(self, conv: nn.Conv2d, rank_in: int, rank_out: int) -> None:
        super().__init__(conv)
        self.rank_in, self.rank_out = rank_in, rank_out
        self.first = nn.Conv2d(conv.in_channels, rank_in, 1, bias=False)
        self.core = self._spatial(rank_in, rank_out)
        self.last = nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, ranks=({self.rank_in}, {self.rank_out})"


class HLRTFConv2d(_FactorizedConv):
    """HLRTF: 1x1 conv Cin -> m*r, depthwise kh x kw conv (groups m*r), 1x1 conv m*r -> Cout (+ bias).

    Channel j*r + k of the middle carries rank component k of transformed slice j; its depthwise
    filter is the j-th spatial singular vector h_j reshaped to kh x kw. Parameters: m*r*(Cin + kh*kw + Cout).
    """

    def __init__(self, conv: nn.Conv2d, slices: int, rank: int) -> None:
        super().__init__(conv)
        self.slices, self.rank = slices, rank
        width = slices * rank
        self.first = nn.Conv2d(conv.in_channels, width, 1, bias=False)
        self.core = self._spatial(width, width, groups=width)
        self.last = nn.Conv2d(width, conv.out_channels, 1, bias=conv.bias is not None)

    @staticmethod
    def parameters_for(conv: nn.Conv2d, slices: int, rank: int) -> int:
        kh, kw = conv.kernel_size
        return slices * rank * (conv.in_channels + kh * kw + conv.out_channels)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, slices={self.slices}, rank={self.rank}"
