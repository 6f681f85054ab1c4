"""What storing all-MiniLM-L6-v2's word embeddings in fewer bits costs, with every other layer in FP32.

For int8 rows (`Int8Embedding`) and 4-bit rows in groups of 16, 32 and 64 (`Int4Embedding`'s layout with
another group size): the table's bytes, and the mean cosine of mean-pooled sentence embeddings against
FP32 on pdo-hub's built-in sentences and the mirror demo's held-out ones (48 sentences). The
measurements behind `embedding_bits: 4` and its group of 32.

    python scripts/bench_embedding_rows.py
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from pdo_hub.demo import embedding_cosine, minilm_folder, tokenized_sentences
from pdo_hub.hub.examples import SENTENCES
from pdo_hub.mirror_demo import HELD_OUT_SENTENCES
from pdo_hub.optimizers.methods import _embeddings
from pdo_hub.optimizers.sizing import serialized_bytes


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder).eval()
    sentences = tokenized_sentences(AutoTokenizer.from_pretrained(folder), list(SENTENCES) + list(HELD_OUT_SENTENCES))
    table = model.embeddings.word_embeddings
    print(f"all-MiniLM-L6-v2 word embeddings {tuple(table.weight.shape)}, FP32 {serialized_bytes(table) / 2**20:.1f} MB; "
          f"cosine on {len(sentences)} sentences, every other layer FP32\n")
    print("| rows | table MB | cosine vs FP32 |\n|---|---|---|")
    def row(name: str, rows: nn.Module) -> None:
        variant = copy.deepcopy(model)
        variant.embeddings.word_embeddings = rows
        print(f"| {name} | {serialized_bytes(rows) / 2**20:.2f} | {embedding_cosine(model, variant, sentences):.5f} |", flush=True)

    row("int8, one scale per row", _embeddings.Int8Embedding.from_float(table))
    try:
        for group in (16, 32, 64):
            _embeddings.INT4_GROUP = group  # the layout's only parameter (read when built and when called)
            row(f"4-bit, groups of {group} (float16 scale + offset)", _embeddings.Int4Embedding.from_float(table))
    finally:
        _embeddings.INT4_GROUP = 32

if __name__ == "__main__":
    main()
