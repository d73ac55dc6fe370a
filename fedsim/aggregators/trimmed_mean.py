"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. For each coordinate, the ``floor(beta * n)`` largest and smallest
values are removed and the rest averaged. Sample weights are ignored, as in the paper.
"""

from __future__ import annotations

import math

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.aggregators.functional import trimmed_mean
from fedsim.schema import bounded

Beta = bounded(float, 0, 0.5, high_open=True)  # the trimmed share of each end


class TrimmedMean(Aggregator):
    """Coordinate-wise beta-trimmed mean (ignores sample weights).

    Args:
        beta: the fraction of values trimmed from *each* end of every coordinate, in [0, 0.5).
            ``beta * n`` should be at least the number of attackers per round.
    """

    def __init__(self, beta: Beta = 0.1) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"aggregator.beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        k = math.floor(self.beta * n + 1e-9)  # 1e-9: 0.3 * 10 must trim 3, not 2
        if n - 2 * k < 1:
            raise ValueError(f"aggregator.beta={self.beta} trims every one of the {n} clients")
        return AggregationResult(trimmed_mean(updates, k), metrics={"trimmed_per_side": float(k)})
