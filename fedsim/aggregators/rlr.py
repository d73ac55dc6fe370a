"""Robust learning rate (RLR).

Ozdayi, Kantarcioglu, Gel, "Defending against Backdoors in Federated Learning with Robust
Learning Rate", AAAI 2021 (arXiv 2007.03767). For every coordinate, the server counts the signs
of the client updates; where fewer than ``threshold`` clients agree (``|sum_i sign(u_i)| <
threshold``) the learning rate of that coordinate is negated, which moves the model *against*
the direction a minority pushed. The update is the sample-weighted mean scaled by these rates.
The FLAIN reference scripts used ``threshold = 6``. RLR does not bound update norms: pair it
with clipping against scaled updates.
"""

from __future__ import annotations

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import PositiveFloat, PositiveInt
from fedsim.aggregators.functional import rlr_learning_rates, weighted_mean


class RLR(Aggregator):
    """Sign-agreement robust learning rate around the sample-weighted mean.

    Args:
        threshold: the minimum sign agreement ``|sum_i sign(u_i)|`` for a coordinate to keep a
            positive learning rate (>= 1; a round needs at least this many clients).
        server_lr: the server learning rate eta (> 0).
    """

    def __init__(self, threshold: PositiveInt = 6, server_lr: PositiveFloat = 1.0) -> None:
        if threshold < 1:
            raise ValueError(f"aggregator.threshold must be >= 1, got {threshold}")
        if server_lr <= 0:
            raise ValueError(f"aggregator.server_lr must be > 0, got {server_lr}")
        self.threshold = threshold
        self.server_lr = server_lr

    def min_clients(self) -> int:
        return self.threshold

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        if n < self.threshold:
            # Every coordinate would be flipped: a configuration error, not a defense.
            raise ValueError(
                f"aggregator.threshold={self.threshold} exceeds the {n} clients of this round"
            )
        lr = rlr_learning_rates(updates, self.threshold, self.server_lr)
        update = lr.to(updates.dtype) * weighted_mean(updates, weights)
        return AggregationResult(update, metrics={"flipped_fraction": float((lr < 0).float().mean())})
