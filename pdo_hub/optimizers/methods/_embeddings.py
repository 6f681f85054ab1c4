"""Large embedding tables as int8 or 4-bit rows: shared by `dynamic` and `static`'s per-layer flow.

A transformer's word embeddings are a large share of its weights (all-MiniLM-L6-v2: 46.9 MB of
90.9 MB in FP32, half of its int8 variant) and a lookup only dequantizes the rows it gathers, so
storing them in fewer bits costs no speed. `embedding_bits: 4` (the aggressive preset) stores them
as 4-bit codes in groups of `INT4_GROUP` values with their own scale and offset, the layout of
llama.cpp's Q4_1 and of AWQ/GPTQ group quantization: on all-MiniLM-L6-v2 the pooled-embedding
cosine of that table alone is 0.9991 against 0.99999 for int8 rows (48 sentences,
`scripts/bench_embedding_rows.py`), at 0.62 of int8's bytes. A table whose 4-bit rows break the budget falls back to int8, then to float.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ...core.errors import RecipeError
from ..modules import get_module, replace_module, replace_modules, shared_parameter_ids

logger = logging.getLogger(__name__)
EMBEDDING_MIN_PARAMS = 1 << 20  # small tables are not worth it
INT4_GROUP = 32  # values per scale/offset pair: 16 was only 0.0003 closer on MiniLM, for 2x the scales


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (symmetric).

    int8 rows take a quarter of the FP32 table, and a lookup only dequantizes the rows it gathers.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(num_embeddings))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        new = cls(embedding.num_embeddings, embedding.embedding_dim)
        weight = embedding.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-12) / 127.0
        new.weight.copy_((weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        new.scale.copy_(scale)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # torch.embedding, not `weight[ids]`: the same rows, without advanced indexing's set-up (~10 us a call
        # at request sizes), and out-of-range ids fail as nn.Embedding's do, negative ones included.
        return torch.embedding(self.weight, ids).float() * torch.embedding(self.scale.unsqueeze(1), ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


class Int4Embedding(nn.Module):
    """An embedding table stored as 4-bit codes, two per byte, with a float16 scale and offset per group.

    Buffers: `codes` (rows x dim/2 uint8: value 2k in the low nibble, 2k+1 in the high one), `scale`
    and `offset` (rows x dim/`INT4_GROUP` float16). A value is `code * scale + offset` (asymmetric:
    a group's 16 levels span exactly its [min, max]).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        if not supports_int4(embedding_dim):
            raise ValueError(f"4-bit rows need an embedding width that is a multiple of {INT4_GROUP}, not {embedding_dim}.")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        groups = embedding_dim // INT4_GROUP
        self.register_buffer("codes", torch.empty(num_embeddings, embedding_dim // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.empty(num_embeddings, groups, dtype=torch.float16))
        self.register_buffer("offset", torch.empty(num_embeddings, groups, dtype=torch.float16))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int4Embedding":
        new = cls(embedding.num_embeddings, embedding.embedding_dim)
        groups = embedding.weight.detach().float().reshape(new.num_embeddings, -1, INT4_GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        # The stored (float16) scale and offset are the ones the codes are computed against.
        scale = ((high - low) / 15).clamp(min=1e-8).half()
        offset = low.half()
        codes = ((groups - offset.float()[..., None]) / scale.float()[..., None]).round().clamp(0, 15).to(torch.uint8)
        codes = codes.reshape(new.num_embeddings, -1, 2)
        new.codes.copy_(codes[..., 0] | (codes[..., 1] << 4))
        new.scale.copy_(scale)
        new.offset.copy_(offset)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        packed = torch.embedding(self.codes, ids)  # as in Int8Embedding.forward
        codes = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(*ids.shape, -1, INT4_GROUP).float()
        values = codes * torch.embedding(self.scale, ids).float().unsqueeze(-1) + torch.embedding(self.offset, ids).float().unsqueeze(-1)
        return values.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, 4-bit rows in groups of {INT4_GROUP}"


def supports_int4(embedding_dim: int) -> bool:
    return embedding_dim % INT4_GROUP == 0


_LAYERS = {8: Int8Embedding, 4: Int4Embedding}


def quantize_embeddings(model: nn.Module, ctx, max_loss: float | None, method: str, before: float | None = None) -> dict:
    """Large, untied embedding tables in `ctx.config.embedding_bits` bits, unless that raises the loss by more
    than `max_loss`: then in int8 (when 4 bits were asked for), else in float. `before`: the model's loss
    as it is, when the caller has just measured it (else it is measured here).

    Returns:
        the recipe fields: {} when no table was quantized, else `embeddings` (the paths) and, for 4-bit
        rows, `embedding_bits` (int8 records carry none, as before 4-bit rows existed).
    """
    shared = shared_parameter_ids(model)
    paths = [
        path for path, module in model.named_modules()
        if type(module) is nn.Embedding and module.weight.numel() >= EMBEDDING_MIN_PARAMS
        and module.max_norm is None and id(module.weight) not in shared
    ]
    if not paths:
        return {}
    floats = {path: model.get_submodule(path) for path in paths}
    tried = [8]
    if ctx.config.embedding_bits == 4:
        if all(supports_int4(floats[path].embedding_dim) for path in paths):
            tried.insert(0, 4)
        else:
            ctx.note(logger, f"{method}: 4-bit embedding rows need widths that are multiples of {INT4_GROUP}: int8 rows instead.")
    if max_loss is None:
        before = None
    elif before is None:
        before = ctx.measure_loss(model)
    for bits in tried:
        replace_modules(model, {path: _LAYERS[bits].from_float(floats[path]) for path in paths})
        after = None if before is None else ctx.measure_loss(model)
        if after is None or after - before <= max_loss:
            return {"embeddings": paths} if bits == 8 else {"embeddings": paths, "embedding_bits": bits}
        ctx.note(logger, f"{method}: {bits}-bit embedding rows raised the loss to {after:.4f}"
                         + ("; trying int8." if bits == 4 else "; kept them in float."))
    replace_modules(model, floats)
    return {}


def restore_embeddings(model: nn.Module, record: dict, method: str) -> None:
    """Structure only: the rows and scales come from the safetensors load."""
    bits = record.get("embedding_bits", 8)
    if bits not in _LAYERS:
        raise RecipeError(f"{method}: unknown embedding_bits {bits!r}: the recipe is from a newer pdo-hub.")
    for path in record.get("embeddings", []):
        module = get_module(model, path)
        if type(module) is not nn.Embedding:
            raise RecipeError(f"{method}: '{path}' is a {type(module).__name__}, the recipe expects an Embedding.")
        replace_module(model, path, _LAYERS[bits](module.num_embeddings, module.embedding_dim))
