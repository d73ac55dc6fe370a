"""Multi-Metrics.

Huang, Li, Chen, Zhang, Song, "Multi-metrics adaptively identifies backdoors in Federated
learning", ICCV 2023. Every client gets three features, the sums of its cosine, Manhattan and
Euclidean distances to the other updates: ``x_i = sum_j (d_cos, d_man, d_euc)(u_i, u_j)``. The
features are whitened with their covariance ``C`` over the round's clients and scored by
``s_i = x_i^T C^+ x_i`` (a Mahalanobis norm; ``C^+`` is the pseudo-inverse, so equal features
do not break it). The ``keep`` fraction with the lowest scores is averaged with sample weights.

The FLAIN reference scripts used ``keep = 0.4`` but measured the distances from each client to
the global model instead of between clients; we follow the paper (pairwise). The authors' own
code squares the cosine distance and uses ``| ||u_i|| - ||u_j|| |`` for the Euclidean feature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.aggregators.functional import weighted_mean
from fedsim.aggregators.flame import cosine_distances


def multi_metrics_scores(updates: Tensor) -> Tensor:
    """``[n]`` whitened scores; lower means more typical."""
    u = updates
    cos = cosine_distances(u)
    manhattan = torch.cdist(u, u, p=1.0).double()
    euclid = torch.cdist(u, u, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").double()
    features = torch.stack([cos.sum(1), manhattan.sum(1), euclid.sum(1)], dim=1)  # [n, 3]
    precision = torch.linalg.pinv(torch.cov(features.T), hermitian=True)
    return ((features @ precision) * features).sum(dim=1)


def multi_metrics_select(updates: Tensor, keep: float) -> Tensor:
    """Indices of the ``max(1, floor(keep * n))`` lowest scores (ties: lower index first)."""
    n = updates.shape[0]
    k = max(1, math.floor(keep * n + 1e-9))  # 1e-9: 0.3 * 10 must keep 3, not 2
    return torch.sort(multi_metrics_scores(updates), stable=True).indices[:k]


class MultiMetrics(Aggregator):
    """Keep the clients most typical under three whitened distance metrics and average them.

    Args:
        keep: the fraction of clients kept each round, in (0, 1].
    """

    def __init__(self, keep: float = 0.4) -> None:
        if not 0 < keep <= 1:
            raise ValueError(f"aggregator.keep must be in (0, 1], got {keep}")
        self.keep = keep

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        idx = multi_metrics_select(updates, self.keep)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[idx] = True
        return AggregationResult(weighted_mean(updates[idx], weights[idx]), accepted=accepted)
