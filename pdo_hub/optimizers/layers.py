"""Factorized layers: a dense layer replaced by two thinner ones in sequence.

They keep the attributes of the layer they replace (`in_features`, `out_features`,
`in_channels`, ...) so code that inspects the model keeps working, and their children are plain
`nn.Linear` / `nn.Conv2d`, so a later quantization step treats them like any other layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LowRankLinear(nn.Module):
    """y = up(down(x)) with down: in -> rank (no bias), up: rank -> out (the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConv2d(nn.Module):
    """A kh x kw conv to `rank` channels (original stride/padding/dilation), then a 1x1 conv out."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.kernel_size, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        self.down = nn.Conv2d(
            conv.in_channels, rank, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode,
        )
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}"


class LowRankEmbedding(nn.Module):
    """An embedding table V x d stored as V x rank codes (`down`) times a rank -> d map (`up`).

    With `head_rows` K > 0, K rows (the most frequent tokens) stay exact in `head` and only the other
    V - K rows are coded; the int32 buffer `slot` maps a token id to its row: below K a row of `head`,
    from K on row `slot - K` of `down` (block-wise low rank grouped by frequency, as in GroupReduce).
    """

    def __init__(self, embedding: nn.Embedding, rank: int, head_rows: int = 0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = embedding.num_embeddings, embedding.embedding_dim, rank
        self.padding_idx, self.head_rows = embedding.padding_idx, head_rows
        # padding_idx only freezes that row's gradient; with a head the padding row may live in either block.
        self.down = nn.Embedding(embedding.num_embeddings - head_rows, rank, padding_idx=None if head_rows else embedding.padding_idx)
        self.up = nn.Linear(rank, embedding.embedding_dim, bias=False)
        if head_rows:
            self.head = nn.Embedding(head_rows, embedding.embedding_dim)
            self.register_buffer("slot", torch.arange(embedding.num_embeddings, dtype=torch.int32))

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed table, for code that reads `embeddings.weight` (e.g. resizing, inspection)."""
        coded = self.up(self.down.weight)
        if not self.head_rows:
            return coded
        return torch.cat([self.head.weight, coded])[self.slot.long()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.head_rows:
            return self.up(self.down(ids))
        slot = self.slot[ids].long()
        exact = self.head(slot.clamp_max(self.head_rows - 1))
        coded = self.up(self.down((slot - self.head_rows).clamp_min(0)))
        return torch.where((slot < self.head_rows).unsqueeze(-1), exact, coded)

    def extra_repr(self) -> str:
        head = f", head_rows={self.head_rows}" if self.head_rows else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}{head}"
