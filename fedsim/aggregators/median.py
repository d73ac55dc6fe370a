"""Coordinate-wise median.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. Each coordinate of the result is the median of that coordinate
over the clients (for even ``n`` the mean of the two middle values, as numpy). Sample weights
are ignored, as in the paper.
"""

from __future__ import annotations

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.aggregators.functional import median


class Median(Aggregator):
    """Coordinate-wise median of the updates (ignores sample weights)."""

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        return AggregationResult(median(updates))
