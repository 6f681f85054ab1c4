"""Whole attention heads as a unit of `prune`: which heads a layer keeps, scored, costed, replayed.

A BERT-style self-attention module (transformers' `BertSelfAttention` and its copies: RoBERTa, ELECTRA,
MiniLM...) holds `query`, `key` and `value` Linears of width heads x head_dim, splits each output into
heads with `.view(..., -1, attention_head_size)`, and returns the heads concatenated again; one Linear
(`attention.output.dense`) consumes that context. Head h is rows [h*d, (h+1)*d) of the three
projections and the same columns of the consumer, so dropping it is four slices plus the module's head
count (`num_attention_heads`, `all_head_size`; the forward itself only needs the width).

A layer is only offered for head pruning when all of this is checked on the model rather than assumed:
the three projections are split into heads in the traced forward, the module's returned context is the
very tensor one Linear reads, nothing else holds parameters in the module, and dropping a head by
slicing gives the model's output that zeroing the head's consumer columns gives (so the head layout,
the projections' coupling and the forward's use of the new width are right). Anything else stays whole.

A head's score is the energy of its share of the consumer's output, E||W[:, h] (ctx_h - mean)||^2 (the
head's block of the calibration context covariance: `prune` compensation moves a dropped head's mean
output into the consumer's bias), relative to the sum over heads. The record keeps the kept heads per
module ({path: {"type", "kept"}}) besides the channel slices, and `restore_head_counts` sets the head
counts again on a freshly replayed model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..inputs import call_model, output_tensor
from ..modules import run_hooked
from ..pruning_slices import replay

PROJECTIONS = ("query", "key", "value")
MIN_KEPT_SHARE = 0.25  # a layer keeps at least a quarter of its heads
LAYOUT_TOLERANCE = 1e-4  # relative output difference between slicing a head and zeroing it


@dataclasses.dataclass
class AttentionLayer:
    """One self-attention module whose heads can be dropped whole.

    Attributes:
        path: the attention module (e.g. `encoder.layer.0.attention.self`).
        type_name: its class name, checked again when a recipe is replayed.
        output: path of the Linear that reads the concatenated heads.
        heads / head_dim: its head count and width per head.
        attention_macs: multiply-adds of the score and weighted-sum matmuls on the example input (all heads).
    """

    path: str
    type_name: str
    output: str
    heads: int
    head_dim: int
    attention_macs: int = 0

    @property
    def projections(self) -> list[str]:
        return [f"{self.path}.{name}" if self.path else name for name in PROJECTIONS]

    def channels(self, heads: list[int]) -> list[int]:
        """The projection rows (and consumer columns) of `heads`, in order."""
        return [h * self.head_dim + j for h in sorted(heads) for j in range(self.head_dim)]

    def slices(self, kept: list[int]) -> dict[str, dict[str, Any]]:
        """The prune record's channel slices ({path: {"type", "out", "in"}}) keeping heads `kept`."""
        channels = self.channels(kept)
        plan = {path: {"type": "Linear", "out": channels, "in": None} for path in self.projections}
        plan[self.output] = {"type": "Linear", "out": None, "in": channels}
        return plan

    def modules_touched(self) -> set[tuple[str, str]]:
        """(path, side) pairs head pruning owns: channel groups must leave them alone."""
        return {(path, "out") for path in self.projections} | {(self.output, "in")}


def _attention_fields(module: nn.Module) -> tuple[int, int] | None:
    """(head count, head_dim) of a module shaped like BERT's self-attention, whatever its projections' width."""
    heads, head_dim = getattr(module, "num_attention_heads", None), getattr(module, "attention_head_size", None)
    if type(heads) is not int or type(head_dim) is not int or heads < 1 or head_dim < 1:
        return None
    if not all(type(getattr(module, name, None)) is nn.Linear for name in PROJECTIONS):
        return None  # a subclass (quantized, LoRA...) may not slice like a plain Linear
    # Other weights in the module (relative position tables, gates...) might be laid out per head too.
    with_params = {name for name, child in module.named_children() if any(True for _ in child.parameters())}
    if with_params != set(PROJECTIONS) or any(True for _ in module.parameters(recurse=False)):
        return None
    return heads, head_dim


def _head_geometry(module: nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) of an unpruned BERT-style attention module with 2+ heads, or None."""
    fields = _attention_fields(module)
    if fields is None or fields[0] < 2:
        return None
    width = fields[0] * fields[1]
    return fields if all(getattr(module, name).out_features == width for name in PROJECTIONS) else None


def _consumers_and_macs(model: nn.Module, example, candidates: dict[str, nn.Module]) -> tuple[dict[str, str], dict[str, int]]:
    """({attention path: path of the single Linear reading its returned context}, {path: attention matmul MACs})."""
    names = {id(m): path for path, m in model.named_modules()}
    contexts: dict[str, torch.Tensor] = {}
    shapes: dict[str, dict[str, torch.Size]] = {path: {} for path in candidates}
    readers: list[tuple[torch.Tensor, nn.Module]] = []

    def keep_context(path):
        def hook(_module, _args, out):
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor):
                contexts[path] = first
        return hook

    def keep_shape(path, name):
        def hook(_module, _args, out):
            shapes[path][name] = out.shape
        return hook

    def keep_reader(module, args):
        if args and isinstance(args[0], torch.Tensor):
            readers.append((args[0], module))

    handles = [m.register_forward_pre_hook(keep_reader) for m in model.modules() if isinstance(m, nn.Linear)]
    for path, module in candidates.items():
        handles.append(module.register_forward_hook(keep_context(path)))
        handles += [getattr(module, name).register_forward_hook(keep_shape(path, name)) for name in ("query", "key")]
    run_hooked(model, handles, [example])
    consumers, macs = {}, {}
    for path, context in contexts.items():
        found = [module for tensor, module in readers if tensor is context]
        if len(found) == 1 and id(found[0]) in names:
            consumers[path] = names[id(found[0])]
        query, key = shapes[path].get("query"), shapes[path].get("key")
        if query is not None and key is not None and len(query) == 3 and len(key) == 3:
            # scores (q x k^T) and the weighted sum of values: two seq_q x seq_k x width products per batch
            macs[path] = 2 * query[0] * query[1] * key[1] * query[2]
    return consumers, macs


def find_attention_layers(model: nn.Module, example, head_splits: set[int], excluded: set[int]) -> list[AttentionLayer]:
    """The attention modules whose heads can be dropped whole (see the module docstring).

    Args:
        head_splits: ids of modules whose output the forward splits into heads.
        excluded: ids of modules that must not be sliced (called twice, tied weights, producing the output,
            or a kind `replay` cannot rebuild).
    """
    candidates = {}
    for path, module in model.named_modules():
        geometry = _head_geometry(module)
        projections = [getattr(module, name, None) for name in PROJECTIONS]
        if geometry and all(id(p) in head_splits and id(p) not in excluded for p in projections):
            candidates[path] = module
    if not candidates:
        return []
    consumers, macs = _consumers_and_macs(model, example, candidates)
    layers = []
    for path, module in candidates.items():
        heads, head_dim = _head_geometry(module)
        output = consumers.get(path)
        if output is None:
            continue
        reader = model.get_submodule(output)
        if type(reader) is not nn.Linear or id(reader) in excluded or reader.in_features != heads * head_dim:
            continue
        layers.append(AttentionLayer(path, type(module).__name__, output, heads, head_dim, macs.get(path, 0)))
    return layers if layers and _layout_holds(model, example, layers) else []


def apply_heads(model: nn.Module, layers: list[AttentionLayer], kept: dict[str, list[int]]) -> nn.Module:
    """Slice `model` to keep heads `kept[layer.path]` (the same code path `restore` takes)."""
    plan: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if layer.path in kept:
            plan.update(layer.slices(kept[layer.path]))
    replay(model, plan)
    return restore_head_counts(model, heads_record(layers, kept))


@torch.no_grad()
def _layout_holds(model: nn.Module, example, layers: list[AttentionLayer]) -> bool:
    """Whether slicing one head out of every layer changes the output exactly as zeroing its consumer columns."""
    probe = {layer.path: min(1, layer.heads - 1) for layer in layers}  # an inner head: catches a wrong layout
    sliced = apply_heads(copy.deepcopy(model), layers, {layer.path: [h for h in range(layer.heads) if h != probe[layer.path]] for layer in layers})
    try:
        expected = output_tensor(call_model(sliced, example)).float()
    except RuntimeError:
        return False  # the forward cannot run with fewer heads (a width it reads from somewhere else)
    del sliced
    saved = {}
    try:
        for layer in layers:
            weight = model.get_submodule(layer.output).weight
            columns = torch.tensor(layer.channels([probe[layer.path]]))
            saved[layer.path] = (weight, columns, weight[:, columns].clone())
            weight[:, columns] = 0
        zeroed = output_tensor(call_model(model, example)).float()
    finally:
        for weight, columns, values in saved.values():
            weight[:, columns] = values
    if zeroed.shape != expected.shape:
        return False
    return float((expected - zeroed).norm()) <= LAYOUT_TOLERANCE * max(float(zeroed.norm()), 1e-12)


def head_scores(model: nn.Module, layers: list[AttentionLayer], stats, sensitivity: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, each head's share of the model's output loss (`sensitivity`: {output projection path:
    score per head}) or, where that is missing, of the consumer's output energy on the calibration inputs.

    `stats` is {consumer path: (context Gram, rows, mean context or None)}; with a mean the energy is
    taken about it, since compensation moves a dropped head's mean output into the consumer's bias.
    """
    scores = []
    for layer in layers:
        if layer.output in sensitivity:
            loss = sensitivity[layer.output]
            scores.append(loss / loss.sum().clamp_min(1e-30))
            continue
        if layer.output not in stats:
            scores.append(torch.full((layer.heads,), 1.0 / layer.heads, dtype=torch.float64))
            continue
        gram, count, mean = stats[layer.output]
        moments = gram / max(count, 1) - (torch.outer(mean, mean) if mean is not None else 0)
        weight = model.get_submodule(layer.output).weight.detach().double()
        energy = torch.empty(layer.heads, dtype=torch.float64)
        for h in range(layer.heads):
            block = slice(h * layer.head_dim, (h + 1) * layer.head_dim)
            w = weight[:, block]
            energy[h] = torch.einsum("oi,ij,oj->", w, moments[block, block], w).clamp_min(0)  # E||W_h ctx_h||^2
        scores.append(energy / energy.sum().clamp_min(1e-30))
    return scores


def kept_head_counts(heads: int) -> list[int]:
    """The head counts a layer may keep: from a quarter of its heads (at least one) to all but one."""
    return list(range(max(1, math.ceil(MIN_KEPT_SHARE * heads)), heads))


def per_head_cost(model: nn.Module, layer: AttentionLayer, macs: dict[int, int]) -> tuple[int, int]:
    """(parameters, multiply-adds) one head carries: its projection rows, consumer columns and attention products."""
    params = work = 0
    for path in layer.projections:
        module = model.get_submodule(path)
        params += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        work += macs.get(id(module), 0)
    consumer = model.get_submodule(layer.output)
    params += consumer.weight.numel()
    work += macs.get(id(consumer), 0) + layer.attention_macs
    return max(1, params // layer.heads), work // layer.heads


def top_heads(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True)[:k].tolist())


def heads_record(layers: list[AttentionLayer], kept: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """The record's "heads": {attention path: {"type", "kept"}} for the layers that lose heads."""
    return {layer.path: {"type": layer.type_name, "kept": sorted(kept[layer.path])} for layer in layers if layer.path in kept}


def restore_head_counts(model: nn.Module, heads: Any) -> nn.Module:
    """Set each attention module's head count to its kept heads, after `replay` sliced its projections.

    A recipe may come from a downloaded file, so every field is checked against the module it changes.
    """
    if not isinstance(heads, dict):
        raise RecipeError("prune: the recipe's 'heads' is not a mapping of attention modules to kept heads.")
    for path, entry in heads.items():
        module = _attention_module(model, path, entry)
        kept = entry.get("kept")
        total = module.num_attention_heads
        if not (isinstance(kept, list) and kept and all(type(h) is int and 0 <= h < total for h in kept) and len(set(kept)) == len(kept)):
            raise RecipeError(f"prune: kept heads {str(kept)[:40]} are not distinct heads of '{path}' ({total} heads).")
        width = len(kept) * module.attention_head_size
        if any(getattr(module, name).out_features != width for name in PROJECTIONS):
            raise RecipeError(f"prune: '{path}' keeps {len(kept)} heads but its projections were not sliced to {width} channels.")
        module.num_attention_heads, module.all_head_size = len(kept), width
    return model


def _attention_module(model: nn.Module, path: Any, entry: Any) -> nn.Module:
    if not isinstance(path, str) or not isinstance(entry, dict):
        raise RecipeError("prune: a 'heads' entry of the recipe is not {path: {'type', 'kept'}}.")
    try:
        module = model.get_submodule(path)
    except AttributeError as err:
        raise RecipeError(f"prune: the model has no attention module '{path}': the recipe was made for another architecture.") from err
    if type(module).__name__ != entry.get("type") or _attention_fields(module) is None:
        raise RecipeError(f"prune: '{path}' is a {type(module).__name__}, the recipe expects attention heads of a {entry.get('type')}.")
    return module
