"""`dynamic`: int8 weights, activations quantized at run time; no calibration data needed.

Linear layers get per-channel symmetric int8 weights and 8-bit activations quantized per token with
a zero point per token (`per_token_asymmetric`, see `_int8_linear`), on pdo-hub's compiled kernel
(`_token_int8_kernel`). That is both the most faithful scheme and, with the kernel, the fastest, so no
layer-by-layer search is spent on a mix: all-MiniLM-L6-v2 built so, against the earlier mix of
symmetric per-token and fbgemm's per-tensor `full_range` layers (10-17 of 37) loaded beside it
(`scripts/bench_workloads.py --baseline`, a Xeon with AMX-INT8, 2 threads), ran a sorted corpus 1.18x
as fast, a stream of batch-1 requests 1.18x, batch-1 requests 1.43x at 8 tokens and 1.04x at 128,
at embedding cosine 0.9975 instead of 0.9956. Where the kernel cannot be built (no C++ compiler), per-token layers run as a dozen ATen ops each
and fbgemm's one op is faster: then each layer's sensitivity is the measured loss with only it on
`full_range` (the rest per-token), and the fewest most-sensitive layers stay per-token so the loss fits
the budget. The budget is half of what earlier steps left of `preserve_accuracy_threshold`, and never
more than `HIGH_FIDELITY_SHARE` of the threshold on top of what earlier steps lost, which keeps
transformer embeddings at cosine >= 0.995 at the default 0.02 (all-MiniLM-L6-v2: torch.ao's stock x86
path 0.979). Records of earlier versions name `per_token` (symmetric per-token activations): they load
as they were built. When `dynamic` serves a configured `fx` (a model
fx cannot trace, such as a transformer: the quality preset), it keeps `fx`'s mixed precision too: if
int8 everywhere still loses more than that budget, the fewest most sensitive Linears stay float.
Without a way to measure loss every Linear uses per-token activations. LSTM/GRU use torch.ao's stock dynamic
modules. Large untied embedding tables are stored as int8 rows (all-MiniLM-L6-v2: 90.9 MB -> ~22 MB),
or 4-bit rows with `embedding_bits: 4` (`_embeddings`), unless that alone breaks the budget. Inference runs as one frozen trace for every input shape where it
can (`_fast_forward`: the second call pays ~0.3 s to trace, once). torch has no CUDA kernels for these, so on CUDA the method is skipped with a note.

Both schemes are built portable by default (`_int8_isa`): 7-bit weights (and per-token activations),
exact on CPUs without VNNI, where full-range int8 saturates; the record says which was built and a load
on a CPU that cannot run it exactly is refused. LSTM/GRU keep torch.ao's 7-bit activations: portable.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..modules import get_module, replace_module, replace_modules
from ..registry import Method, register_method
from . import _int8_isa, _token_int8_kernel
from ._fast_forward import accelerate
from ._embeddings import quantize_embeddings, restore_embeddings
from ._int8_linear import FullRangeDynamicLinear, LazyPackedParams, TokenInt8Linear
from ._mixed_precision import budget_after_earlier_steps, keep_high_precision
from ._torch_ao import quiet_torch_ao
from ._warm_up import input_spec

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU}
HIGH_FIDELITY_SHARE = 0.2  # 0.004 at the default threshold
FAST, PRECISE, FLOAT = "full_range", "per_token_asymmetric", "float"
SYMMETRIC = "per_token"  # per-token activations without a zero point: written by earlier versions, still loaded
_KERNELS = {FAST: "fbgemm", PRECISE: "onednn", SYMMETRIC: "onednn"}  # the int8 library each scheme's GEMM runs on


def _qconfig(module_type: str):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # torch.ao has per-channel dynamic kernels for Linear only; RNNs keep per-tensor weights.
    return per_channel_dynamic_qconfig if module_type == "Linear" else default_dynamic_qconfig


def _stock_dynamic(module: nn.Module, type_name: str) -> nn.Module:
    with quiet_torch_ao():
        from torch.ao.quantization import quantize_dynamic

        # quantize_dynamic swaps children only, so the layer goes in a one-item container.
        return quantize_dynamic(nn.Sequential(module), {type(module): _qconfig(type_name)}, dtype=torch.qint8)[0]


def _swap_measures(model: nn.Module, ctx, paths: list[str], chosen: dict[str, nn.Module], others: dict[str, nn.Module]):
    """(`loss_with`, `probe_with`) for `keep_high_precision`: the loss with `chosen` modules at the given
    paths and `others` at the rest of `paths`, on all calibration inputs or on the probe subset."""
    def loss_with(selected: list[str], measure=ctx.measure_loss) -> float:
        picked = set(selected)
        replace_modules(model, {path: chosen[path] if path in picked else others[path] for path in paths})
        return measure(model)

    return loss_with, lambda selected: loss_with(selected, ctx.measure_probe_loss or ctx.measure_loss)


def _load_shell(cls: type, in_features: int, out_features: int, bias: bool) -> nn.Module:
    """A torch.ao dynamic Linear for a state-dict load to fill, built at 1x1 (its constructor would
    otherwise pack a full-size placeholder weight: 18 ms of a 60 ms MiniLM cache-hit load), whose loaded
    weights are packed on first use (`LazyPackedParams`: the other 25 ms)."""
    with quiet_torch_ao():
        module = cls(1, 1, bias_=bias, dtype=torch.qint8)
        module._packed_params = LazyPackedParams(torch.qint8)
    module.in_features, module.out_features = in_features, out_features
    return module


def _fast_linear(linear: nn.Linear, portable: bool) -> nn.Module:
    if portable:
        return FullRangeDynamicLinear.portable_from_float(linear)
    quantized = _stock_dynamic(copy.deepcopy(linear), "Linear")
    quantized.__class__ = FullRangeDynamicLinear  # same packed weights, 8-bit activations
    return quantized


@register_method
class DynamicQuantization(Method):
    name = "dynamic"
    kind = "quantization"
    cpu_only = True

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        targets = {
            path: type_name
            for path, module in model.named_modules()
            for type_name, cls in _FLOAT_TYPES.items()
            if type(module) is cls and path
        }
        if not targets:
            ctx.note(logger, "dynamic: the model has no Linear/LSTM/GRU layer to quantize.")
            return model, []
        linears = [path for path, type_name in targets.items() if type_name == "Linear"]
        budget, before = budget_after_earlier_steps(ctx, model)
        # First, so the Linear search accounts for it; a quarter of this step's budget at most (before
        # the cap below: 4-bit rows, asked for by `embedding_bits`, trade that much fidelity for size).
        max_loss = None if budget is None else 0.25 * (budget - before)
        # The high-fidelity cap bounds what int8 adds, not the total: after `prune` or `svd` spent part
        # of the threshold, an absolute cap left int8 nothing and pushed every Linear onto the slower
        # per-token kernels, cancelling the smaller model's speed.
        budget = None if budget is None else min(budget, before + HIGH_FIDELITY_SHARE * ctx.config.preserve_accuracy_threshold)
        recurrent = [path for path, type_name in targets.items() if type_name != "Linear"]
        for path in recurrent:
            replace_module(model, path, _stock_dynamic(model.get_submodule(path), targets[path]))
        # `before` is still the model's loss unless an LSTM/GRU was just quantized.
        embeddings = quantize_embeddings(model, ctx, max_loss, self.name, None if recurrent else before)
        floats = {path: model.get_submodule(path) for path in linears}
        portable = _int8_isa.wants_portable(ctx, _KERNELS.values(), self.name) if linears else True
        int8 = {path: TokenInt8Linear.from_float(floats[path], portable, asymmetric=True) for path in linears}
        if budget is None or _token_int8_kernel.op() is not None:
            kept = {path: float("nan") for path in linears}  # per-token everywhere: most faithful, and fastest with the kernel
        else:
            ctx.note(logger, f"dynamic: pdo-hub's per-token int8 kernel is unavailable ({_token_int8_kernel.status()}): "
                             "layers that the loss budget allows run fbgemm's per-tensor kernel instead.")
            fast = {path: _fast_linear(floats[path], portable) for path in linears}
            loss_with, probe_with = _swap_measures(model, ctx, linears, fast, dict(int8))
            kept = keep_high_precision(linears, loss_with, budget, probe_with=probe_with)
            int8.update({path: fast[path] for path in linears if path not in kept})
        schemes = {path: PRECISE if path in kept else FAST for path in linears}
        kept_float = {}
        if budget is not None and ctx.config.quantization_method == "fx":
            # `fx` asks for mixed precision with float layers; on a model it cannot trace, `dynamic` serves it
            # (`flavours`) and keeps that promise: the fewest most sensitive Linears stay float to fit the budget.
            loss_with, probe_with = _swap_measures(model, ctx, linears, int8, floats)
            kept_float = keep_high_precision(linears, loss_with, budget, probe_with=probe_with)
            schemes.update(dict.fromkeys(kept_float, FLOAT))
        for path in linears:
            logger.debug("dynamic: %s %s", path, "float" if path in kept_float else f"int8 ({schemes[path]} activations)")
        replace_modules(model, {path: floats[path] if path in kept_float else int8[path] for path in linears})
        if len(kept) < len(linears):
            ctx.note(logger, f"dynamic: {len(kept)} of {len(linears)} Linear layers use per-token activations (loss budget {budget:.4f}).")
        if kept_float:
            ctx.note(logger, f"dynamic: {len(kept_float)} of {len(linears)} Linear layers stay float to fit the loss budget "
                             f"{budget:.4f} (mixed precision, as `fx` asks): {', '.join(kept_float)}.")
        record = {"method": self.name, "modules": targets, "schemes": schemes, "dtype": "qint8", "engine": torch.backends.quantized.engine,
                  _int8_isa.FIELD: _int8_isa.full_range(_KERNELS[scheme] for scheme in schemes.values() if scheme in _KERNELS) if schemes and not portable
                  else _int8_isa.portable("Linear: 7-bit weights (and per-token activations); LSTM/GRU: 7-bit activations")}
        record.update(embeddings)
        measured = {path: loss for path, loss in {**kept, **kept_float}.items() if loss == loss}  # NaN: not measured
        if measured:
            record["sensitivity"] = {path: round(loss, 6) for path, loss in measured.items()}
        spec = input_spec(ctx.example_inputs)
        if spec is not None:
            record["inputs"] = spec
        return accelerate(model), [record]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        schemes = record.get("schemes", {})
        # Records from before `int8_isa` used full-range int8 in both schemes (torch.ao's "stock" is 7-bit).
        _int8_isa.check(record, self.name, legacy_kernels={_KERNELS[s] for s in schemes.values() if s in _KERNELS})
        portable = _int8_isa.is_portable(record)
        restore_embeddings(model, record, self.name)
        replacements: dict[str, nn.Module] = {}
        with quiet_torch_ao():
            from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

            for path, type_name in record["modules"].items():
                module = get_module(model, path)
                if type_name not in _FLOAT_TYPES or not isinstance(module, _FLOAT_TYPES[type_name]):
                    raise RecipeError(f"dynamic: '{path}' is a {type(module).__name__}, the recipe expects a {type_name}.")
                if type_name != "Linear":
                    replace_module(model, path, _stock_dynamic(module, type_name))
                    continue
                # Structure only: the int8 weights come from the safetensors load.
                scheme = schemes.get(path, "stock")  # records written before schemes existed used torch.ao's stock layer
                args = (module.in_features, module.out_features)
                if scheme == FLOAT:  # mixed precision: this layer was kept float
                    continue
                if scheme in (PRECISE, SYMMETRIC):
                    new = TokenInt8Linear(*args, bias=module.bias is not None, portable=portable, asymmetric=scheme == PRECISE)
                elif scheme == FAST:
                    new = _load_shell(FullRangeDynamicLinear, *args, module.bias is not None)
                elif scheme == "stock":
                    new = _load_shell(DynamicLinear, *args, module.bias is not None)
                else:
                    raise RecipeError(f"dynamic: unknown activation scheme '{scheme}' for '{path}': the recipe is from a newer pdo-hub.")
                replacements[path] = new
        replace_modules(model, replacements)  # one walk over the model, not one per layer
        return accelerate(model, record.get("inputs"))
