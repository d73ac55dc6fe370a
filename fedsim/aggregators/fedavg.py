"""FedAvg: sample-weighted mean of client updates with a server learning rate.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv 1602.05629).
"""

from __future__ import annotations

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import PositiveFloat
from fedsim.aggregators.functional import weighted_mean


class FedAvg(Aggregator):
    """Sample-weighted average of the updates.

    Args:
        server_lr: the server learning rate eta; the global model moves by eta * mean update.
    """

    def __init__(self, server_lr: PositiveFloat = 1.0) -> None:
        if server_lr <= 0:
            raise ValueError(f"aggregator.server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        return AggregationResult(self.server_lr * weighted_mean(updates, weights))
