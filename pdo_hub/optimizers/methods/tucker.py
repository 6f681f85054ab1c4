"""`tucker`: Tucker-2 decomposition of conv kernels through tensorly (1x1 -> core kh x kw -> 1x1).

A kernel W (Cout x Cin x kh x kw) is decomposed along its two channel modes only:
W ~= core x_0 U_out x_1 U_in with core r_out x r_in x kh x kw (tensorly's `partial_tucker`, HOOI from
an SVD start). It runs as a 1x1 conv Cin -> r_in (U_in^T), the core conv with the original
stride/padding/dilation, and a 1x1 conv r_out -> Cout (U_out, original bias).

Ranks are an energy estimate under the global budget: for each (r_out, r_in) pair on a grid the lost
energy is estimated by the HOSVD bound (1 - e_out(r_out)) + (1 - e_in(r_in)), where e_mode(r) is the
share of the mode unfolding's squared singular values in its top r; `budget.allocate_options` then
spends the parameters where they remove the most estimated error. Linear layers and 1x1 convs fall
back to activation-aware SVD (`_conv_factorization`). A bounded distillation recovers accuracy.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

from .._record_fields import record_int
from ..budget import LayerOptions
from ..registry import Method, register_method
from ..tensor_layers import TuckerConv2d
from ._conv_factorization import apply_conv_factorization, grid, install_factored, restore_conv_record

logger = logging.getLogger(__name__)


def _mode_energy(matrix: torch.Tensor) -> torch.Tensor:
    """Cumulative share of energy in the top r singular values of a mode unfolding, r = 1..n."""
    energy = torch.linalg.svdvals(matrix).square()
    return energy.cumsum(0) / energy.sum().clamp_min(1e-30)


def tucker_options(path: str, conv: nn.Conv2d) -> tuple[LayerOptions, None]:
    weight = conv.weight.detach().double()
    cout, cin, kh, kw = weight.shape
    out_kept = _mode_energy(weight.reshape(cout, -1)).tolist()
    in_kept = _mode_energy(weight.transpose(0, 1).reshape(cin, -1)).tolist()
    options = [
        (cin * r_in + r_in * r_out * kh * kw + r_out * cout, (1.0 - out_kept[r_out - 1]) + (1.0 - in_kept[r_in - 1]), (r_in, r_out))
        for r_in in grid(len(in_kept)) for r_out in grid(len(out_kept))
    ]
    return LayerOptions(path, conv.weight.numel(), options), None


def tucker_build(model: nn.Module, path: str, conv: nn.Conv2d, ranks: tuple[int, int], _: Any) -> dict[str, Any]:
    import tensorly
    from tensorly.decomposition import partial_tucker

    rank_in, rank_out = ranks
    weight = conv.weight.detach().double().cpu().numpy()
    # tensorly's backend is global and other libraries change it (importing tensorly-torch selects
    # "pytorch"), which would reject these numpy arrays.
    with warnings.catch_warnings(), tensorly.backend_context("numpy"):
        # A rank above the other modes' product is clipped by tensorly with a warning; the result is exact anyway.
        warnings.simplefilter("ignore", UserWarning)
        (core, (u_out, u_in)), _errors = partial_tucker(weight, rank=[rank_out, rank_in], modes=[0, 1], init="svd", n_iter_max=20)
    weights = {"first": torch.from_numpy(u_in.T.copy()), "core": torch.from_numpy(core.copy()), "last": torch.from_numpy(u_out.copy())}
    install_factored(model, path, conv, TuckerConv2d(conv, rank_in, rank_out), weights)
    logger.debug("tucker: %s ranks (in %d, out %d)", path, rank_in, rank_out)
    return {"method": "tucker", "form": "tucker", "module": path, "layer": "Conv2d", "rank_in": rank_in, "rank_out": rank_out}


@register_method
class TuckerFactorization(Method):
    name = "tucker"
    kind = "factorization"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        return apply_conv_factorization(model, ctx, self.name, tucker_options, tucker_build)

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return restore_conv_record(model, record, lambda conv, record: TuckerConv2d(
            conv, record_int(record, "rank_in", 1, conv.in_channels), record_int(record, "rank_out", 1, conv.out_channels)))
