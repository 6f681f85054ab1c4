"""Large embedding tables stored as int8 or 4-bit rows (`embedding_bits`), their budget fall-back and reload."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from helpers import apply_method, make_context
from pdo_hub.optimizers import get_method, load_optimized, save_optimized
from pdo_hub.optimizers.methods._embeddings import INT4_GROUP, Int4Embedding, Int8Embedding
from pdo_hub.optimizers.sizing import serialized_bytes

VOCAB, DIM = 8192, 128  # 2^20 values: just large enough to be quantized


class Bag(nn.Module):
    """A large untied vocabulary table feeding a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, 16)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def _bag() -> Bag:
    torch.manual_seed(0)
    return Bag().eval()


def test_int4_rows_decode_to_the_group_grid_within_half_a_step():
    torch.manual_seed(0)
    table = nn.Embedding(300, 64)
    table.weight.data[3, :INT4_GROUP] = 5.0  # a constant group: zero range must not divide by zero
    rows = Int4Embedding.from_float(table)
    ids = torch.arange(300)
    decoded = rows(ids)
    groups = table.weight.detach().reshape(300, -1, INT4_GROUP)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (decoded - table.weight.detach()).abs().reshape(300, -1, INT4_GROUP).amax(-1)
    # Half a step, plus float16 rounding of the stored scale and offset.
    assert bool((error <= 0.5 * step + 2e-3 * groups.abs().amax(-1) + 1e-6).all()), error.max()
    assert torch.allclose(decoded[3, :INT4_GROUP], torch.full((INT4_GROUP,), 5.0), atol=5e-3)
    assert rows.codes.dtype == torch.uint8 and rows.codes.shape == (300, 32)
    assert torch.equal(rows(torch.tensor([[7, 3], [3, 7]]))[0, 1], decoded[3])


def test_int4_rows_refuse_a_width_that_is_not_whole_groups():
    with pytest.raises(ValueError, match="multiple of 32"):
        Int4Embedding(10, 48)


@pytest.mark.parametrize("bits, layer", [(8, Int8Embedding), (4, Int4Embedding)])
def test_dynamic_stores_the_configured_embedding_bits_and_reloads_identically(bits, layer, tmp_path):
    model = _bag()
    ids = torch.randint(0, VOCAB, (4, 12))
    optimized, records = apply_method("dynamic", model, ids, embedding_bits=bits)
    assert type(optimized.embed) is layer
    assert records[0]["embeddings"] == ["embed"] and records[0].get("embedding_bits", 8) == bits
    with torch.inference_mode():
        expected = optimized(ids)
    save_optimized(optimized, tmp_path)
    reloaded = load_optimized(tmp_path, _bag())
    assert type(reloaded.embed) is layer
    with torch.inference_mode():
        assert torch.equal(reloaded(ids), expected)


def test_four_bit_rows_are_smaller_than_int8_rows():
    model = _bag()
    ids = torch.randint(0, VOCAB, (4, 12))
    int8, _ = apply_method("dynamic", model, ids, embedding_bits=8)
    int4, _ = apply_method("dynamic", model, ids, embedding_bits=4)
    table = VOCAB * DIM
    assert serialized_bytes(int8) - serialized_bytes(int4) > 0.35 * table  # int8: 1 byte a value; 4-bit: 0.5 + scales


def test_four_bit_rows_over_the_budget_fall_back_to_int8_with_a_note():
    model = _bag()
    ids = torch.randint(0, VOCAB, (4, 12))
    ctx = make_context(model, ids, embedding_bits=4)
    ctx.measure_loss = lambda m: 0.5 if type(m.embed) is Int4Embedding else 0.0  # 4-bit rows break any budget
    ctx.notes = []
    optimized, records = get_method("dynamic").apply(model, ctx)
    assert type(optimized.embed) is Int8Embedding and "embedding_bits" not in records[0]
    assert any("4-bit embedding rows raised the loss" in note and "trying int8" in note for note in ctx.notes), ctx.notes
