"""Large batches of token sequences run as consecutive sub-batches of at most `TOKENS_PER_PASS` tokens.

Why: each intermediate of a pass over B sequences of L tokens holds B x L rows (MiniLM's FFN: B x L x
1536 floats). Above 32 MiB, glibc's malloc maps every such buffer fresh from the kernel and unmaps it
on free (its mmap threshold cannot go higher), so each of them pays page faults and zero-filling on
every call, and the rows no longer stay in cache between ops. all-MiniLM-L6-v2 `dynamic` at 2 threads
(AMD EPYC, AVX512-VNNI; `scripts/bench_sub_batches.py`: whole batches against sub-batches in one
process, interleaved), in sub-batches of 2048 tokens: 64 x 256 tokens 1.57-1.97x as fast in three runs,
32 x 256 1.24-1.77x, 64 x 128 1.94x, 128 x 32 1.27x; 32 x 128 (4096 tokens) 1.01x and 64 x 16 0.95x
(batches of up to 2048 tokens are not cut). 1024 tokens per pass did about as well, 4096 worse at 64 x
128 and 128 x 32 (1.48x, 0.98x). ONNX Runtime does not pay this (its arena allocator keeps buffers).

A batch is cut only where the model computes each sequence on its own: every input is a 2-d tensor of
the same B x L (`input_ids` and its masks), and the outputs are batch-major. That is checked once per
input structure on the first large call: its first two sequences run alone and together, and the
outputs must agree in shape and up to int8 roundings (`_TOLERANCE`: the attention kernel changes with
the batch size, `_small_attention`, and a difference in the last bit can flip an activation's int8
rounding, as a different batch composition does in any runtime). A model whose sequences see each other
(in-batch similarities, a batch-wide mean; a mixture of experts with a capacity per batch would be
another) fails the check and keeps whole batches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

#: Tokens (sequences x length) per pass of a large batch.
TOKENS_PER_PASS = 2048
# Outputs of a batch run whole and in sub-batches agree when ||difference|| <= this x ||output||. Where
# the attention kernel changes with the batch size, a difference in the last bit flips int8 roundings
# that cascade through the layers: all-MiniLM-L6-v2 `dynamic`'s token states differed by 0.021-0.023 of
# their norm between whole batches of 32 and 64 x 128 tokens and sub-batches of 8 (`scripts/
# bench_sub_batches.py`, its "largest difference"). A model whose sequences see each other differs by
# whole units (or in shape).
_TOLERANCE = 0.1


def rows_per_pass(keywords: tuple[str, ...], tensors: tuple) -> int | None:
    """Sequences per sub-batch for these inputs, or None where the batch runs whole (small, or not token rows)."""
    if "input_ids" not in keywords or len(keywords) != len(tensors):
        return None
    shape = tensors[0].shape
    if len(shape) != 2 or any(t.shape != shape for t in tensors):
        return None
    batch, length = shape
    rows = max(1, TOKENS_PER_PASS // max(1, length))
    return rows if batch > rows else None


def run_in_sub_batches(call: Callable[[tuple], Any], tensors: tuple, rows: int, checked: bool) -> tuple[Any, bool]:
    """(output of `call` over all of `tensors`, whether sub-batches are sound for it).

    `call(tensors)` runs the model on a slice of the batch. `checked`: the structure passed the check
    before; otherwise the first two sequences run alone and together first (three small calls), and
    where the two disagree the whole batch runs in one call.
    """
    if not checked:
        alone = [call(tuple(t[index:index + 1] for t in tensors)) for index in (0, 1)]
        if not _joins_alone(call(tuple(t[:2] for t in tensors)), alone):
            return call(tensors), False
    parts = [call(tuple(t[start:start + rows] for t in tensors)) for start in range(0, tensors[0].shape[0], rows)]
    return _concatenate(parts), True


def close(got: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether `got` is `reference` up to int8 roundings (see `_TOLERANCE`)."""
    return float(torch.linalg.vector_norm((got - reference).double())) <= _TOLERANCE * float(torch.linalg.vector_norm(reference.double())) + 1e-12


def _concatenate(parts: list) -> Any:
    flat = [pytree.tree_flatten(part) for part in parts]
    leaves = [torch.cat(column) for column in zip(*(leaves for leaves, _ in flat))]
    return pytree.tree_unflatten(leaves, flat[0][1])


def _joins_alone(together: Any, alone: list) -> bool:
    """Whether `together` (one call on several sequences) is the outputs of each sequence `alone` joined
    along the batch, up to int8 roundings."""
    whole, spec = pytree.tree_flatten(together)
    pieces = [pytree.tree_flatten(part) for part in alone]
    if any(piece_spec != spec for _, piece_spec in pieces):
        return False
    for index, reference in enumerate(whole):
        column = [leaves[index] for leaves, _ in pieces]
        if not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in (reference, *column)):
            return False
        if reference.shape[0] != len(column) or any(t.shape != (1, *reference.shape[1:]) for t in column):
            return False
        joined = torch.cat(column)
        if not (close(joined, reference) if reference.is_floating_point() else torch.equal(joined, reference)):
            return False
    return True
