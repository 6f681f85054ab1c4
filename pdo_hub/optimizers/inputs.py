"""Calling a model on "inputs" of any common shape: a tensor, a tuple of tensors, or a mapping of
keyword arguments (a dict, or a tokenizer's `BatchEncoding`, which is a `UserDict`, not a dict)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import torch
import torch.nn as nn

from ..core.errors import OptimizationError

Inputs = Any  # torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]


def map_tensors(inputs: Inputs, function) -> Inputs:
    """`inputs` with `function` applied to every tensor, in the same structure; every mapping (a
    `BatchEncoding` included) comes back a plain dict."""
    if isinstance(inputs, torch.Tensor):
        return function(inputs)
    if isinstance(inputs, Mapping):
        return {key: map_tensors(value, function) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(value, function) for value in inputs)
    return inputs


def normalize_inputs(inputs: Inputs) -> Inputs:
    """The same inputs with every mapping turned into a plain dict (a `BatchEncoding` included), so
    the methods, traces and recipes downstream only ever see tensors, tuples, lists and dicts."""
    return map_tensors(inputs, lambda tensor: tensor)


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor that stands for a model's output: logits / last hidden state / the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise OptimizationError(f"Cannot find a tensor in the model's output of type {type(output).__name__}.")


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    return map_tensors(inputs, lambda tensor: tensor.to(device))


def batch_size(inputs: Inputs) -> int:
    for tensor in _tensors(inputs):
        return int(tensor.shape[0]) if tensor.dim() else 1
    return 1


def synthesize_inputs(example: Inputs, count: int, seed: int) -> list[Inputs]:
    """`count` inputs shaped like `example`: the example itself, then perturbed copies.

    Float tensors get noise at 10% of their spread (inputs of the same distribution, not copies);
    integer tensors (token ids) keep padding and their first/last real token and redraw about a third
    of the rest from the range of ids the example uses, so no id outside that range is invented.
    """
    generator = torch.Generator().manual_seed(seed)
    synthesized = [example]
    for _ in range(count - 1):
        synthesized.append(_perturb(example, generator))
    return synthesized


def held_out_positions(count: int) -> list[int]:
    """Which of `count` (1+) batches or samples are held out: every 4th, or the last when there are fewer than 4."""
    return list(range(3, count, 4)) or [count - 1]


def split_held_out(batches: list[Inputs], seed: int = 0) -> tuple[list[Inputs], list[Inputs], str]:
    """(calibration, held-out, what the held-out inputs are): candidates are judged on inputs no method saw.

    With 4 or more batches every 4th is held out. With fewer, every batch of 2+ samples gives every 4th
    of its samples (at least one) to the held-out set; single-sample batches give their last one. One
    single input is all a method can calibrate on, so the held-out inputs are perturbed copies of it
    (`synthesize_inputs`), and the description says so.
    """
    if 0 < len(batches) < 4 and all(batch_size(batch) >= 2 for batch in batches):
        calibration, held_out = [], []
        for batch in batches:
            count = batch_size(batch)
            held = held_out_positions(count)
            calibration.append(take_samples(batch, [index for index in range(count) if index not in held]))
            held_out.append(take_samples(batch, held))
        samples = sum(batch_size(batch) for batch in held_out)
        return calibration, held_out, f"{samples} held-out samples of the calibration batches"
    if len(batches) >= 2:
        held = held_out_positions(len(batches))
        plural = "es" if len(held) > 1 else ""
        return ([b for i, b in enumerate(batches) if i not in held], [batches[i] for i in held],
                f"{len(held)} held-out calibration batch{plural}")
    if not batches:
        raise OptimizationError("calibration_data is empty: pass at least one batch, or leave it out.")
    synthesized = synthesize_inputs(batches[0], 5, seed)[1:]
    return batches, synthesized, (f"{len(synthesized)} inputs perturbed from the one calibration input "
                                  "(too few to hold one out; pass more calibration data for a real held-out set)")


def take_samples(inputs: Inputs, indices: list[int]) -> Inputs:
    """The samples at `indices` (dimension 0) of every tensor of a batch."""
    return map_tensors(inputs, lambda tensor: tensor[indices] if tensor.dim() else tensor)


def infer_example_inputs(model: nn.Module) -> Inputs:
    """Guess a batch-1 input when the caller gave none (transformers' dummy inputs, or the first layer)."""
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:
        config = getattr(model, "config", None)
        vocab = int(getattr(config, "vocab_size", 1000) or 1000)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (1, 128), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return torch.randn(1, module.in_channels, 224, 224)
        if isinstance(module, nn.Conv1d):
            return torch.randn(1, module.in_channels, 128)
        if isinstance(module, nn.Linear):
            return torch.randn(1, module.in_features)
        if isinstance(module, nn.Embedding):
            return torch.randint(0, module.num_embeddings, (1, 128))
    raise OptimizationError(
        f"Cannot guess an input for {type(model).__name__}: pass example_inputs= (a tensor, tuple, or dict / BatchEncoding of tensors)."
    )


def _tensors(inputs: Inputs) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield inputs
    elif isinstance(inputs, Mapping):
        for value in inputs.values():
            yield from _tensors(value)
    elif isinstance(inputs, (tuple, list)):
        for value in inputs:
            yield from _tensors(value)


def _perturb(value: Inputs, generator: torch.Generator) -> Inputs:
    if isinstance(value, Mapping):
        return {key: (val if key in ("attention_mask", "token_type_ids") else _perturb(val, generator)) for key, val in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_perturb(item, generator) for item in value)
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        spread = value.float().std() if value.numel() > 1 else value.float().abs().mean()
        noise = torch.randn(value.shape, generator=generator).to(value.device, value.dtype)
        return value + noise * (0.1 * float(spread) + 1e-3)
    # Token ids: keep the padding value (the most frequent id) and the first and last real tokens
    # (special tokens), and redraw about a third of the others uniformly from the range of ids the
    # example uses, so calibration covers many tokens rather than copies of one sentence.
    padding = value.flatten().mode().values
    keep = value == padding
    keep[..., 0] = True
    real = (~(value == padding)).long().cumsum(-1)
    keep |= real == real.max(-1, keepdim=True).values
    ids = value[~(value == padding)]
    low, high = (int(ids.min()), int(ids.max())) if ids.numel() else (0, int(value.max()))
    redraw = (torch.rand(value.shape, generator=generator) < 0.35).to(value.device) & ~keep
    picks = torch.randint(low, high + 1, value.shape, generator=generator).to(value.device, value.dtype)
    return torch.where(redraw, picks, value)


def without_trailing_padding(batch: Inputs) -> Inputs:
    """A token batch cut after its last real token (the `attention_mask` columns that are zero everywhere).

    Padded positions do not change the real tokens' outputs, but a batch-1 sentence padded to 128 tokens
    is mostly padding: its statistics would weigh pad tokens ~10x more than words, and distillation would
    mostly match pad outputs. Other inputs come back unchanged.
    """
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not mask.any():
        return batch
    length = int(mask.ne(0).any(0).nonzero().max()) + 1
    if length == mask.shape[1]:
        return batch
    shape = tuple(mask.shape)
    return map_tensors(batch, lambda t: t[:, :length] if t.dim() >= 2 and tuple(t.shape[:2]) == shape else t)
