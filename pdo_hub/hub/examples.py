"""Deterministic example and calibration inputs for the models pdo-hub fetches.

The optimizer's result depends on its inputs, so they are fixed: real sentences through the model's own
tokenizer for text models, seeded tensors for vision models. Changing them changes every stored variant,
hence `INPUTS_VERSION` in the cache key.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Sequence

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

MAX_TOKENS = 128
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Paris is the capital and most populous city of France.",
    "Machine learning models can be compressed after they are downloaded.",
    "She bought fresh bread and cheese at the market this morning.",
    "The stock market fell sharply after the announcement.",
    "How do I reset my password if I forgot it?",
    "Quantum computers use qubits instead of classical bits.",
    "The children were playing football in the park until sunset.",
    "This restaurant serves the best noodles I have ever eaten!",
    "Heavy rain is expected across the region tomorrow afternoon.",
    "Photosynthesis converts light energy into chemical energy.",
    "He read the contract twice before signing it.",
    "A small dog is running through the grass.",
    "The museum opens at nine and closes at five.",
    "Neural networks learn representations from data.",
)


def text_inputs(tokenizer: Any, model: nn.Module, count: int, sentences: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """Batch-1 inputs, padded/truncated to `MAX_TOKENS`, for `model`.

    Args:
        tokenizer: The model's tokenizer.
        model: The model (its `forward` says which keys to keep).
        count: How many inputs from the built-in sentences (cycled) when `sentences` is not given.
        sentences: The user's calibration sentences: all of them are used (at least `count`, cycled).

    Keys the model's `forward` does not accept (e.g. `token_type_ids` for some models) are dropped.
    """
    accepted = _forward_parameters(model)
    pool = tuple(sentences) if sentences else SENTENCES
    total = max(1, count, len(sentences) if sentences else 0)
    inputs = []
    for index in range(total):
        sentence = pool[index % len(pool)]
        try:
            encoded = tokenizer(sentence, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        except ValueError:  # no pad token (GPT-style tokenizers): batch 1 needs no padding anyway
            encoded = tokenizer(sentence, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        inputs.append({k: v for k, v in dict(encoded).items() if accepted is None or k in accepted})
    return inputs


def image_inputs(count: int, size: int = 224, channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """`count` seeded, ImageNet-normalized-looking batch-1 image tensors."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, channels, size, size, generator=generator) for _ in range(max(1, count))]


def _forward_parameters(model: nn.Module) -> set[str] | None:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        # **kwargs swallows anything; keep only the usual names so nothing unexpected is passed.
        return {"input_ids", "attention_mask", "token_type_ids"} | set(parameters)
    return set(parameters)
