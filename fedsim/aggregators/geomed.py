"""Geometric median (RFA) by the smoothed Weiszfeld algorithm.

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions on
Signal Processing 2022 (arXiv 1912.13445). The aggregate is the point minimising the
sample-weighted sum of Euclidean distances to the updates, with distances floored at ``nu`` so
that an iterate landing on an update does not divide by zero. The paper reports that a few
Weiszfeld steps suffice; we iterate to a relative tolerance instead, with a step cap.
"""

from __future__ import annotations

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import NonNegativeFloat, PositiveFloat, PositiveInt
from fedsim.aggregators.functional import geometric_median


class GeometricMedian(Aggregator):
    """Sample-weighted geometric median (RFA, smoothed Weiszfeld).

    Args:
        max_iter: the most Weiszfeld steps per round.
        nu: the smoothing floor on distances (> 0).
        tol: stop when the objective improves by less than ``tol`` times its value.
    """

    def __init__(self, max_iter: PositiveInt = 100, nu: PositiveFloat = 1e-6, tol: NonNegativeFloat = 1e-6) -> None:
        if max_iter < 1:
            raise ValueError(f"aggregator.max_iter must be >= 1, got {max_iter}")
        if nu <= 0:
            raise ValueError(f"aggregator.nu must be > 0, got {nu}")
        if tol < 0:
            raise ValueError(f"aggregator.tol must be >= 0, got {tol}")
        self.max_iter = max_iter
        self.nu = nu
        self.tol = tol

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        update, steps = geometric_median(updates, weights, self.max_iter, self.nu, self.tol)
        return AggregationResult(update, metrics={"weiszfeld_steps": float(steps)})


class RFA(GeometricMedian):
    """Robust Federated Aggregation: another name for ``GeometricMedian`` (same arguments)."""
