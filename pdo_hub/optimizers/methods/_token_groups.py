"""`svd` for vocabulary tables: exact rows for the frequent tokens, a low-rank code for the rest.

A word-embedding table is a Linear on one-hot tokens, so its "activations" are token frequencies, and
a few calibration sentences see a tiny part of the vocabulary: in all-MiniLM-L6-v2, 32 sentences
touch 203 of 30,522 tokens, yet 44% of the tokens of 16 other sentences are unseen ones. A
single low-rank table (whatever the row weights) then either serves the seen tokens or the unseen
ones badly. Following GroupReduce (Chen et al., NeurIPS 2018: block-wise low rank, blocks grouped by
frequency), the table is split: the K most frequent tokens keep exact rows and the other V - K rows
share one rank-r code. The frequencies are estimated, since calibration sees so little:

- tokens seen in calibration come first, by count; the unseen ones are ranked by a ridge regression
  of log(count + 1/2) on the embedding rows (trained embeddings encode frequency: Gong et al., FRAGE,
  NeurIPS 2018), which in all-MiniLM-L6-v2 puts 65 of the 79 distinct unseen held-out tokens among
  its top 5,000 unseen (both counts printed by `scripts/bench_lowrank.py`);
- the mass of unseen tokens is the Good-Turing estimate (share of tokens seen once), kept within
  [1/2, 0.9] since a user's inputs differ from a small calibration sample, spread over the unseen ones by
  Zipf's law along that ranking.

For each (K, r), the tail's best rank-r code under these frequencies comes from the eigenvectors of
its frequency-weighted Gram matrix (rows are projected on them: codes = E_tail V_r, up = V_r^T), and
its expected relative error is the dropped eigenvalues' share. Every (K, r) that saves parameters is
an option for the global budget (`budget.allocate_options`); the int32 token -> row map counts too.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ..budget import LayerOptions
from ..layers import LowRankEmbedding
from ..modules import match_dtype_device

MIN_ROWS_PER_DIM = 8  # only vocabularies: a position table (512 x 384) has no frequency tail to exploit
HEAD_STEPS = 64  # K takes values V * i / HEAD_STEPS, up to half the table


def is_vocabulary(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) and module.num_embeddings >= MIN_ROWS_PER_DIM * module.embedding_dim


@dataclasses.dataclass
class TokenGroups:
    """A vocabulary table with its tokens ordered by estimated frequency.

    Attributes:
        table: V x d rows, float64.
        order: token ids, most frequent first.
        frequency: estimated share of each token (sums to 1).
        seen_share: each token's share in the calibration inputs (what the inputs actually contain).
    """

    table: torch.Tensor
    order: torch.Tensor
    frequency: torch.Tensor
    seen_share: torch.Tensor

    @classmethod
    def from_counts(cls, module: nn.Embedding, counts: torch.Tensor) -> "TokenGroups":
        table = module.weight.detach().double().cpu()
        counts = counts.double().cpu()
        seen = counts > 0
        # Ridge regression of log-frequency on the rows ranks the tokens calibration never saw.
        rows = table - table.mean(0)
        target = (counts + 0.5).log()
        target = target - target.mean()
        gram = rows.T @ rows
        ridge = float(gram.diagonal().mean()) * torch.eye(gram.shape[0], dtype=gram.dtype)
        score = rows @ torch.linalg.solve(gram + ridge, rows.T @ target)
        score[seen] = float(score.max()) + 1.0 + counts[seen]  # seen tokens first, by count
        order = score.argsort(descending=True)
        seen_share = counts / counts.sum()
        singletons = float((counts == 1).sum()) / float(counts.sum())
        # At least 1/2 (inputs differ from a small sample); at most 0.9, so tokens a tiny calibration
        # saw only once each (Good-Turing then says "all new") keep some weight.
        unseen_mass = min(max(singletons, 0.5), 0.9)
        # Zipf's law continued past the seen tokens along the estimated ranking.
        rank = torch.empty_like(counts)
        rank[order] = torch.arange(1, counts.numel() + 1, dtype=counts.dtype)
        zipf = torch.where(seen, torch.zeros_like(counts), 1.0 / rank)
        if not float(zipf.sum()):  # calibration saw every token: nothing to estimate
            return cls(table, order, seen_share, seen_share)
        frequency = (1 - unseen_mass) * seen_share + unseen_mass * zipf / zipf.sum()
        return cls(table, order, frequency, seen_share)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.table.shape)

    def tail_basis(self, head_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues descending, eigenvectors) of the frequency-weighted Gram of the rows past the head."""
        weights = self.frequency.clone()
        weights[self.order[:head_rows]] = 0.0  # the head's rows are exact: out of the tail's Gram
        return _eigen(_weighted_gram(self.table, weights))

    def options(self, path: str) -> LayerOptions:
        """(parameters, expected relative error, (head_rows, rank)) for every split that saves parameters."""
        vocab, dim = self.shape
        total = float((self.frequency * _row_energy(self.table)).sum()) or 1.0
        tail_gram = _weighted_gram(self.table, self.frequency)
        options, head = [], 0
        for step in range(HEAD_STEPS // 2 + 1):
            # Peel the next block of frequent rows off the tail's Gram instead of recomputing it.
            block = self.order[head:vocab * step // HEAD_STEPS]
            tail_gram = tail_gram - _weighted_gram(self.table[block], self.frequency[block])
            head += block.numel()
            values, _ = _eigen(tail_gram)
            dropped = (values.sum() - values.cumsum(0)).tolist()
            overhead = head * dim + (vocab if head else 0)  # exact rows + the int32 token -> row map
            for rank in range(1, dim):
                params = overhead + rank * (vocab - head + dim)
                if params >= vocab * dim:
                    break
                options.append((params, max(0.0, dropped[rank - 1] / total), (head, rank)))
        return LayerOptions(path, vocab * dim, options)

    def layer(self, module: nn.Embedding, head_rows: int, rank: int) -> tuple[LowRankEmbedding, dict[str, float]]:
        """The factored table for (head_rows, rank), and its relative errors: "expected" under the
        estimated frequencies, "seen" under the calibration tokens' own."""
        values, vectors = self.tail_basis(head_rows)
        basis = vectors[:, :rank]
        # Without a head there is no token -> row map: the codes stay in token-id order.
        head, tail = self.order[:head_rows], self.order[head_rows:] if head_rows else torch.arange(self.shape[0])
        new = LowRankEmbedding(module, rank, head_rows)
        codes = self.table @ basis  # every token's code (V x rank), instead of V x d copies of the tail
        with torch.no_grad():
            new.down.weight.copy_(codes[tail])
            new.up.weight.copy_(basis)
            if head_rows:
                new.head.weight.copy_(self.table[head])
                slot = torch.empty(self.shape[0], dtype=torch.int32)
                slot[self.order] = torch.arange(self.shape[0], dtype=torch.int32)
                new.slot.copy_(slot)
        norms = _row_energy(self.table)
        # |x - x B B^T|^2 = |x|^2 - |x B|^2 for orthonormal B: no V x d temporaries (each 94 MB for MiniLM).
        residual = (norms[tail] - codes[tail].square().sum(1)).clamp_min(0.0)
        errors = {
            "expected": float(values[rank:].sum()) / (float((self.frequency * norms).sum()) or 1.0),
            "seen": float((self.seen_share[tail] * residual).sum()) / (float((self.seen_share * norms).sum()) or 1.0),
        }
        return match_dtype_device(new, module.weight), errors

    def probe(self, module: nn.Embedding) -> tuple[LowRankEmbedding, float]:
        """A half-rank table with no exact rows, so the calibration tokens carry error an output probe can
        see; returns it with the relative error those tokens get."""
        new, errors = self.layer(module, 0, self.shape[1] // 2)
        return new, errors["seen"]


#: Rows per block of `_weighted_gram`: the weighted copy of a block stays small (4096 x 384 float64 = 12 MB).
_GRAM_BLOCK = 4096


def _weighted_gram(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """rows^T diag(weights) rows, a block of rows at a time (the whole weighted copy of a vocabulary is 94 MB)."""
    gram = torch.zeros(rows.shape[1], rows.shape[1], dtype=rows.dtype)
    for start in range(0, rows.shape[0], _GRAM_BLOCK):
        block = rows[start:start + _GRAM_BLOCK]
        gram.addmm_(block.T, block * weights[start:start + _GRAM_BLOCK, None])
    return gram


def _row_energy(rows: torch.Tensor) -> torch.Tensor:
    """Each row's squared norm, without a squared copy of the table."""
    return torch.linalg.vector_norm(rows, dim=1).square()


def _eigen(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(gram)
    return values.flip(0).clamp_min(0), vectors.flip(1)
