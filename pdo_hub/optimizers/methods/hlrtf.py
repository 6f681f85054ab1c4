"""`hlrtf`: hierarchical low-rank tensor factorization of conv kernels.

The idea comes from Luo et al., "HLRTF: Hierarchical Low-Rank Tensor Factorization for Inverse Problems
in Multi-Dimensional Imaging", CVPR 2022: transform a tensor along one mode, then factor each
transformed slice with a low rank. pdo-hub adapts it to weights (DESIGN.md, "Method meanings"):

1. Read a kernel W (Cout x Cin x kh x kw) as a 3-way tensor T of shape Cout x Cin x (kh*kw).
2. Take the SVD of T's spatial-mode unfolding ((kh*kw) x (Cout*Cin)); H = its left singular vectors.
   Transforming along the spatial mode, T_hat = T x_3 H^T, gives kh*kw slices T_hat_j (Cout x Cin),
   ordered by spatial energy. H is orthonormal, so T = sum_j T_hat_j (outer) h_j exactly.
3. Keep the top m slices and factor each with rank r: T_hat_j ~= A_j B_j (truncated SVD).
   W[o, i, s] ~= sum_{j<m} sum_{k<r} A_j[o, k] B_j[k, i] H[s, j].
4. Run it as a 1x1 conv Cin -> m*r (rows B_j), a depthwise kh x kw conv on the m*r channels whose
   filters are h_j (original stride/padding/dilation), and a 1x1 conv m*r -> Cout (columns A_j).
   Parameters: m*r*(Cin + kh*kw + Cout); at m = kh*kw and r = min(Cout, Cin) it equals the dense conv.

Because H is orthonormal, the residual energy of (m, r) is exact:
||T||^2 - sum_{j<m} sum_{k<r} sigma_{j,k}^2, with sigma_{j,k} the singular values of slice j. The
global budget (`budget.allocate_options`) allocates (m, r) per layer by this residual, relative to
the layer's energy. Linear layers and 1x1 convs fall back to activation-aware SVD. A bounded
distillation recovers accuracy afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from .._record_fields import record_int
from ..budget import LayerOptions
from ..registry import Method, register_method
from ..tensor_layers import HLRTFConv2d
from ._conv_factorization import apply_conv_factorization, grid, install_factored, restore_conv_record

logger = logging.getLogger(__name__)


def hlrtf_decompose(weight: torch.Tensor):
    """(H, U, S, Vh): spatial basis (k2 x k2) and the batched SVD of the k2 transformed slices."""
    cout, cin = weight.shape[:2]
    tensor = weight.detach().double().reshape(cout, cin, -1)
    spatial = tensor.reshape(cout * cin, -1).T  # spatial-mode unfolding, (kh*kw) x (Cout*Cin)
    # Left singular vectors via the small (kh*kw)^2 Gram: a complete orthonormal basis even when Cout*Cin < kh*kw.
    energy, H = torch.linalg.eigh(spatial @ spatial.T)
    H = H.flip(1)  # eigh sorts ascending; the top spatial directions come first
    slices = (tensor @ H).permute(2, 0, 1)  # T x_3 H^T: slice j = sum_s T[:, :, s] H[s, j]
    U, S, Vh = torch.linalg.svd(slices, full_matrices=False)
    return H, U, S, Vh


def hlrtf_options(path: str, conv: nn.Conv2d) -> tuple[LayerOptions, Any]:
    decomposition = hlrtf_decompose(conv.weight)
    S = decomposition[2]
    total = float(S.square().sum()) or 1.0
    kept = S.square().cumsum(1)  # kept[j, r-1]: energy of slice j at rank r
    kept_m = kept.cumsum(0)  # kept_m[m-1, r-1]: energy of the top m slices at rank r
    options = [
        (HLRTFConv2d.parameters_for(conv, m, r), max(0.0, 1.0 - float(kept_m[m - 1, r - 1]) / total), (m, r))
        for m in range(1, S.shape[0] + 1) for r in grid(S.shape[1], 48)
    ]
    return LayerOptions(path, conv.weight.numel(), options), decomposition


def hlrtf_weights(conv: nn.Conv2d, decomposition, slices: int, rank: int) -> dict[str, torch.Tensor]:
    """The three convs' weights for (m, r) = (slices, rank)."""
    H, U, S, Vh = decomposition
    root = S[:slices, :rank].sqrt()
    A = U[:slices, :, :rank] * root[:, None, :]  # (m, Cout, r)
    B = root[:, :, None] * Vh[:slices, :rank]  # (m, r, Cin)
    kh, kw = conv.kernel_size
    width = slices * rank
    return {
        "first": B.reshape(width, conv.in_channels, 1, 1),
        "core": H[:, :slices].T.repeat_interleave(rank, dim=0).reshape(width, 1, kh, kw),
        "last": A.permute(1, 0, 2).reshape(conv.out_channels, width, 1, 1),
    }


def hlrtf_build(model: nn.Module, path: str, conv: nn.Conv2d, choice: tuple[int, int], decomposition) -> dict[str, Any]:
    slices, rank = choice
    install_factored(model, path, conv, HLRTFConv2d(conv, slices, rank), hlrtf_weights(conv, decomposition, slices, rank))
    logger.debug("hlrtf: %s m=%d r=%d", path, slices, rank)
    return {"method": "hlrtf", "form": "hlrtf", "module": path, "layer": "Conv2d", "slices": slices, "rank": rank}


@register_method
class HLRTFFactorization(Method):
    name = "hlrtf"
    kind = "factorization"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        return apply_conv_factorization(model, ctx, self.name, hlrtf_options, hlrtf_build)

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return restore_conv_record(model, record, lambda conv, record: HLRTFConv2d(
            conv, record_int(record, "slices", 1, conv.kernel_size[0] * conv.kernel_size[1]),
            record_int(record, "rank", 1, min(conv.in_channels, conv.out_channels))))
