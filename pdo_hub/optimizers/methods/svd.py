"""`svd`: activation-aware truncated SVD of Linear and Conv2d weights into two thinner layers.

Plain truncated SVD keeps the directions of largest *weight* energy, which are not the ones that
matter for the outputs the layer actually produces. Following SVD-LLM (Wang et al., 2024), the weight
W (out x d; a Conv2d kernel read as out x in*kh*kw, against im2col patches) is whitened with the
Cholesky factor S of its calibration inputs' second moment (S S^T = E[x x^T]): the SVD of W S has
exactly the output error ||(W - W_r) X^T||_F^2 = sum of the dropped sigma^2, so truncating it is the
optimal rank-r fit for those inputs. The factors are then
    down = sqrt(Sigma_r) V_r^T S^-1   and   up = U_r sqrt(Sigma_r).
A conv becomes a kh x kw conv to r channels (original stride/padding/dilation) followed by a 1x1 conv.
An untied Embedding table (a lookup is a Linear on one-hot tokens) becomes V x r codes and an r -> d
Linear, whitened by token frequency (half uniform, so tokens the calibration never saw keep their rows).
A vocabulary (in transformers often half of the model) also keeps exact rows for its most frequent
tokens, with frequencies estimated beyond the few the calibration sees (`_token_groups.py`).

Ranks come from the global budget (`budget.allocate_options`): each "one more rank in layer L" step is
ranked by the share of L's output energy it recovers per parameter it costs, so the whole model reaches
`ctx.target_ratio` of its size; layers stay dense where factoring would not save parameters. Tied
weights, grouped convs and non-zero padding modes are left alone. A bounded recovery step
(`recovery.recover`) then distils the factored model from the original.

Record (version 2): {"method": "svd", "module", "layer", "rank", "energy_kept", "whitened"}, plus
"head_rows" for a vocabulary with exact rows; version-1 records (no "whitened") restore the same structure.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from .._record_fields import record_int
from ..activations import input_grams, whitening_factor
from ..budget import LayerOptions, LayerSpectrum, allocate_options, spectrum_options
from ..layers import LowRankConv2d, LowRankEmbedding, LowRankLinear
from ..modules import get_module, match_dtype_device, replace_module, shared_parameter_ids
from ..norm_folding import fold_norms_after, restore_folded
from ..recovery import recover
from ..registry import Method, register_method
from ..sizing import state_bytes
from ._token_groups import TokenGroups, is_vocabulary

logger = logging.getLogger(__name__)


def factorable_layers(model: nn.Module, *, convs: bool = True, linears: bool = True) -> dict[str, nn.Module]:
    """Linear and plain (ungrouped, zero-padded) Conv2d layers whose weights are not tied to another module."""
    shared = shared_parameter_ids(model)
    layers = {}
    for path, module in model.named_modules():
        is_linear = linears and type(module) is nn.Linear
        is_conv = convs and type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        is_table = linears and type(module) is nn.Embedding and module.max_norm is None and not module.sparse
        if (is_linear or is_conv or is_table) and id(module.weight) not in shared and path:
            layers[path] = module
    return layers


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (outputs x inputs); an embedding table maps one-hot tokens, so it is the transpose."""
    if isinstance(module, nn.Embedding):
        return module.weight.detach().double().T
    return module.weight.detach().double().reshape(module.weight.shape[0], -1)


def build_factorized(module: nn.Module, rank: int, head_rows: int = 0) -> nn.Module:
    if isinstance(module, nn.Linear):
        new = LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None)
    elif isinstance(module, nn.Embedding):
        new = LowRankEmbedding(module, rank, head_rows)
    else:
        new = LowRankConv2d(module, rank)
    return match_dtype_device(new, module.weight)


#: The whitening marker of a decomposition whose right vectors are already un-whitened (Vh S^-1).
WHITENED = "cholesky"


def whitened_svd(module: nn.Module, gram: tuple[torch.Tensor, int] | None):
    """(U, S, right, whitening) of W S: `right` is Vh S^-1 and whitening `WHITENED` (a token-weight
    vector for an embedding table); of W alone (whitening None) when the layer never ran."""
    weight = weight_matrix(module)
    if isinstance(module, nn.Embedding):
        factor = token_weights(gram[0]) if gram is not None else None
        U, S, Vh = torch.linalg.svd(weight * factor if factor is not None else weight, full_matrices=False)
        return U, S, Vh, factor
    if gram is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U, S, Vh, None
    # The Gram is d x d (170 MB in float64 for a 3x3 conv over 512 channels), and so is the factor S:
    # the Gram goes as soon as S exists (the caller passes its only reference), and S once the right
    # vectors are un-whitened (Vh S^-1, solving X S = Vh for S lower-triangular, no inverse formed);
    # those are only min(out, d) x d.
    matrix, count = gram
    del gram
    factor = whitening_factor(matrix.to(weight.device), count)
    del matrix
    U, S, Vh = torch.linalg.svd(weight @ factor, full_matrices=False)
    right = torch.linalg.solve_triangular(factor, Vh, upper=False, left=False)
    del factor, Vh
    # Every layer's decomposition is kept until the budget picks the ranks; the factors end up float32
    # weights, so float32 vectors lose nothing there and halve what is held (S stays float64: the
    # spectrum decides the ranks).
    return U.float(), S, right.float(), WHITENED


def token_weights(counts: torch.Tensor) -> torch.Tensor:
    """Diagonal whitening of an embedding table: sqrt of each token's weight.

    A lookup's input covariance is diagonal (token frequencies), but a few calibration sentences see a
    tiny part of the vocabulary, so half of the weight stays uniform: unseen tokens keep their rows.
    """
    share = counts / counts.sum().clamp_min(1.0)
    return (0.5 * share + 0.5 / counts.numel()).sqrt()


def factor_weights(U, S, Vh, factor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) matrices of rank `rank`: up @ down is the best rank-r fit of W on the calibration inputs."""
    root = S[:rank].sqrt()
    right = Vh[:rank]
    if isinstance(factor, torch.Tensor):
        right = right / factor  # diagonal whitening (embedding tables); WHITENED: already un-whitened
    return root[:, None] * right, U[:, :rank] * root


@torch.no_grad()
def _load_factors(new: nn.Module, module: nn.Module, decomposition, rank: int) -> None:
    """Fill a factorized layer `new` with the rank-`rank` factors of `module`."""
    down, up = factor_weights(*decomposition, rank)
    if isinstance(module, nn.Embedding):
        down = down.T  # the code table is V x rank
    new.down.weight.copy_(down.reshape(new.down.weight.shape))
    new.up.weight.copy_(up.reshape(new.up.weight.shape))
    if getattr(module, "bias", None) is not None:
        new.up.bias.copy_(module.bias)


def factored_layer(module: nn.Module, decomposition, choice) -> tuple[nn.Module, float]:
    """`module` factored at `choice` (a rank, or (head_rows, rank) for a vocabulary) and the energy share kept."""
    if isinstance(decomposition, TokenGroups):
        new, errors = decomposition.layer(module, *choice)
        return new, 1.0 - errors["expected"]
    new = build_factorized(module, choice)
    _load_factors(new, module, decomposition, choice)
    S = decomposition[1]
    return new, float(S[:choice].square().sum() / S.square().sum().clamp_min(1e-30))


def svd_factorize(model: nn.Module, layers: dict[str, nn.Module], choices: dict[str, Any], decompositions, name: str) -> list[dict[str, Any]]:
    """Swap each layer in `choices` for its factorized form; returns the recipe records."""
    records = []
    for path, choice in choices.items():
        module = layers[path]
        new, kept = factored_layer(module, decompositions[path], choice)
        head_rows = getattr(new, "head_rows", 0)
        logger.debug("%s: %s rank %d (%d exact rows) keeps %.4f of the output energy", name, path, new.rank, head_rows, kept)
        replace_module(model, path, new)
        whitened = isinstance(decompositions[path], TokenGroups) or decompositions[path][3] is not None
        record = {
            "method": name, "module": path, "layer": type(module).__name__, "rank": new.rank,
            "energy_kept": round(kept, 6), "whitened": whitened,
        }
        records.append({**record, "head_rows": head_rows} if head_rows else record)
    return records


def whitened_spectra(model: nn.Module, layers: dict[str, nn.Module], ctx) -> tuple[dict[str, Any], list]:
    """Activation-whitened SVD of each layer (token groups for a vocabulary) and its options for the global budget."""
    if not layers:
        return {}, []
    decompositions, options = {}, []
    for chunk in _gram_chunks(layers):  # one calibration pass per chunk: bounded memory, not one pass for all
        grams = input_grams(model, chunk, ctx.calibration_inputs, ctx.device)
        for path, module in chunk.items():
            counts = grams.get(path)
            if counts is not None and is_vocabulary(module) and counts[0].sum() > 0:
                decompositions[path] = TokenGroups.from_counts(module, grams.pop(path)[0])
                options.append(decompositions[path].options(path))
                continue
            del counts
            decompositions[path] = whitened_svd(module, grams.pop(path, None))  # its only reference: freed early
            spectrum = LayerSpectrum(path, module.weight.numel(), sum(weight_matrix(module).shape),
                                     decompositions[path][1].square())
            options.append(spectrum_options(spectrum))
    return decompositions, options


#: Float64 Gram bytes recorded in one calibration pass. A 3x3 conv over 512 channels alone has a
#: 170 MB Gram; recording all of ResNet-18's at once held 720 MB (issue: memory <= 3x the FP32 model).
GRAM_BYTES_PER_PASS = 96 * 2**20


def _gram_chunks(layers: dict[str, nn.Module]) -> list[dict[str, nn.Module]]:
    """`layers` in model order, split so that each chunk's Grams fit `GRAM_BYTES_PER_PASS` (a larger one alone)."""
    chunks, current, used = [], {}, 0
    for path, module in layers.items():
        # An embedding's "Gram" is its token-count vector; any other layer's is features x features.
        size = 8 * (module.num_embeddings if isinstance(module, nn.Embedding) else module.weight[0].numel() ** 2)
        if current and used + size > GRAM_BYTES_PER_PASS:
            chunks.append(current)
            current, used = {}, 0
        current[path] = module
        used += size
    if current:
        chunks.append(current)
    return chunks


def output_weighted(model: nn.Module, layers: dict[str, nn.Module], options: list, decompositions, ctx) -> list:
    """Each layer's option errors rescaled by how much its error moves the model's output.

    A layer's relative error says nothing about how it propagates: in all-MiniLM-L6-v2 the word
    embeddings (followed by a LayerNorm) tolerate far larger relative errors than the FFNs. Each layer is factored alone at its middle option, the output loss
    (1 - cosine against the unfactored model's outputs on the calibration inputs) is measured, and
    its errors are scaled by loss / relative error, so the allocation trades measured output loss.
    A vocabulary is probed without exact rows (with them the calibration tokens would see no error),
    at the relative error those tokens get. One forward over the probe inputs (`ctx.probe_inputs`) per layer.
    """
    from ..evaluate import fidelity, reference_outputs

    batches = ctx.probe_inputs
    references = reference_outputs(model, batches, ctx.device)
    weighted, factors = [], {}
    for option in options:
        if not option.options:
            continue
        module, decomposition = layers[option.path], decompositions[option.path]
        if isinstance(decomposition, TokenGroups):
            probe, error = decomposition.probe(module)
        else:
            _, error, rank = option.options[len(option.options) // 2]
            probe, _ = factored_layer(module, decomposition, rank)
        replace_module(model, option.path, probe)
        try:
            loss = fidelity(model, batches, references, ctx.device).loss
        finally:
            replace_module(model, option.path, module)
        factors[option.path] = loss / error if error > 0 else 0.0
    floor = 1e-3 * max(factors.values(), default=0.0)  # a layer that never moved the output still costs a little
    for option in options:
        if option.path in factors:
            factor = max(factors[option.path], floor)
            weighted.append(LayerOptions(option.path, option.dense_params, [(p, e * factor, c) for p, e, c in option.options]))
    logger.debug("svd: output-loss per unit of relative error: %s", {k: round(v, 4) for k, v in factors.items()})
    return weighted


def layer_budget(model: nn.Module, layers: dict[str, nn.Module], target_ratio: float) -> int:
    """Parameters the factorable layers may keep so the whole model's tensors reach `target_ratio`."""
    total_bytes = state_bytes(model)
    itemsize = max(m.weight.element_size() for m in layers.values())
    dense_bytes = sum(m.weight.numel() * m.weight.element_size() for m in layers.values())
    return int((target_ratio * total_bytes - (total_bytes - dense_bytes)) // itemsize)


@register_method
class SVDFactorization(Method):
    name = "svd"
    kind = "factorization"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        layers = factorable_layers(model)
        if not layers:
            ctx.note(logger, "svd: the model has no Linear or Conv2d layer that can be factored.")
            return model, []
        decompositions, spectra = whitened_spectra(model, layers, ctx)
        spectra = output_weighted(model, layers, spectra, decompositions, ctx)
        budget = layer_budget(model, layers, ctx.target_ratio)
        choices = allocate_options(spectra, max(budget, 0))
        if budget <= 0 or not choices:
            ctx.note(logger, f"svd: target ratio {ctx.target_ratio:.2f} cannot be reached by factoring this model's layers.")
        records = svd_factorize(model, layers, choices, decompositions, self.name)
        if records:
            recover(model, ctx, self.name, records)
            model = fold_norms_after(model, ctx, records)
        return model, records

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        module = get_module(model, record["module"])
        if type(module).__name__ != record["layer"]:
            raise RecipeError(f"{record['method']}: '{record['module']}' is a {type(module).__name__}, the recipe expects a {record['layer']}.")
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            raise RecipeError(f"{record['method']}: '{record['module']}' is a {type(module).__name__}, which svd never factors.")
        full_rank = min(module.weight.shape[0], module.weight[0].numel())
        head_limit = module.num_embeddings if isinstance(module, nn.Embedding) else 0
        rank, head_rows = record_int(record, "rank", 1, full_rank), record_int(record, "head_rows", 0, head_limit, default=0)
        replace_module(model, record["module"], build_factorized(module, rank, head_rows))
        return restore_folded(model, record.get("folded_norms", []))
