"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in Byzantium",
ICML 2018. Krum is applied repeatedly to pick ``theta = n - 2f`` updates (each pick is removed
before the next); then, per coordinate, the ``theta - 2f`` selected values closest to the
coordinate-wise median are averaged. Needs ``n >= 4f + 3``. Sample weights are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import NonNegativeInt
from fedsim.aggregators.functional import bulyan


class Bulyan(Aggregator):
    """Bulyan: iterated Krum selection, then a coordinate-wise trimmed mean around the median.

    Args:
        f: the number of Byzantine clients tolerated per round (needs ``n >= 4f + 3``).
    """

    def __init__(self, f: NonNegativeInt = 2) -> None:
        if f < 0:
            raise ValueError(f"aggregator.f must be >= 0, got {f}")
        self.f = f

    def min_clients(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        if n < 4 * self.f + 3:
            raise ValueError(
                f"aggregator.f={self.f} needs at least 4*f+3={4 * self.f + 3} clients per "
                f"round for Bulyan, got {n}"
            )
        update, idx = bulyan(updates, self.f)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[idx] = True
        return AggregationResult(update, accepted=accepted)
