"""Global rank allocation under a size budget.

Ranks are not a uniform per-layer ratio: every "one more rank in layer L" step is ranked by the share
of L's error it removes per parameter it costs, and steps are taken best-first until the budget is
spent. A layer whose rank reaches its break-even point stays dense (factoring it would not save
anything).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerSpectrum:
    """One factorable layer: its dense cost and the energy each extra rank recovers.

    Attributes:
        path: module path.
        dense_params: parameters of the dense weight.
        params_per_rank: parameters one rank of the factorization costs.
        energies: squared singular values (descending) of the (possibly whitened) weight.
    """

    path: str
    dense_params: int
    params_per_rank: int
    energies: torch.Tensor

    @property
    def break_even_rank(self) -> int:
        """Largest rank that still stores fewer parameters than the dense weight."""
        return (self.dense_params - 1) // self.params_per_rank


def allocate_ranks(layers: list[LayerSpectrum], budget_params: int) -> dict[str, int]:
    """Ranks for the layers worth factoring so their total parameters fit `budget_params`.

    Returns:
        {path: rank} for the layers to factor; layers left out stay dense. When even rank 1
        everywhere exceeds the budget, every useful layer gets rank 1 (the closest reachable size).
    """
    layers = [layer for layer in layers if layer.break_even_rank >= 1 and layer.energies.numel()]
    if not layers:
        return {}
    steps: list[tuple[float, int, int]] = []  # (gain per parameter, layer index, rank it leads to)
    for index, layer in enumerate(layers):
        total = float(layer.energies.sum()) or 1.0
        limit = min(layer.break_even_rank, layer.energies.numel())
        gains = (layer.energies[1:limit] / total / layer.params_per_rank).tolist()
        steps.extend((gain, index, rank + 2) for rank, gain in enumerate(gains))
    ranks = [1] * len(layers)
    spent = sum(layer.params_per_rank for layer in layers)
    for gain, index, rank in sorted(steps, key=lambda step: -step[0]):
        cost = layers[index].params_per_rank
        if spent + cost > budget_params:
            continue  # a cheaper step elsewhere may still fit
        if rank == ranks[index] + 1:
            ranks[index] = rank
            spent += cost
    chosen = {}
    for layer, rank in zip(layers, ranks):
        if rank * layer.params_per_rank < layer.dense_params:
            chosen[layer.path] = rank
        logger.debug("budget: %s rank %d of %d (dense %d params)", layer.path, rank, layer.energies.numel(), layer.dense_params)
    return chosen
