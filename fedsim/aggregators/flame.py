"""FLAME.

Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022
(arXiv 2101.02281). Three steps:

1. Filter: HDBSCAN on the pairwise cosine distances of the updates with
   ``min_cluster_size = n // 2 + 1``; only the majority cluster is kept (outliers are dropped).
2. Clip: every kept update is scaled down to the median L2 norm ``S`` of all ``n`` updates.
3. Noise: Gaussian noise with standard deviation ``lambda * S`` is added to the aggregate
   (sample-weighted mean of the clipped, kept updates). The paper's ``lambda`` is 0.001 for
   image classification.

Updates hold trainable weights only (never BatchNorm statistics; see ``fedsim.params``). If
HDBSCAN labels every update as noise, every update is kept and the metric ``all_noise`` is 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.aggregators.functional import clip_to_norm, gaussian_noise, weighted_mean


def cosine_distances(updates: Tensor) -> Tensor:
    """``[n, n]`` float64 matrix of ``1 - cos(u_i, u_j)`` with an exact zero diagonal."""
    unit = updates / torch.linalg.vector_norm(updates, dim=1, keepdim=True).clamp_min(1e-30)
    dist = (1.0 - (unit @ unit.T).double()).clamp_min(0.0)
    dist = 0.5 * (dist + dist.T)  # float32 products are not exactly symmetric
    dist.fill_diagonal_(0.0)
    return dist


def majority_cluster(dist: Tensor) -> Tensor | None:
    """``[n]`` bool: members of the largest HDBSCAN cluster; ``None`` if all are noise."""
    n = dist.shape[0]
    if n < 2:
        return torch.ones(n, dtype=torch.bool, device=dist.device)
    from sklearn.cluster import HDBSCAN  # imported here: sklearn costs ~2.7 s at start-up

    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True,
        copy=True,
    ).fit_predict(dist.cpu().numpy())
    if (labels < 0).all():
        return None
    values, counts = np.unique(labels[labels >= 0], return_counts=True)
    keep = labels == values[np.argmax(counts)]
    return torch.from_numpy(keep).to(dist.device)


def flame(updates: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Steps 1-2 of FLAME without noise.

    Returns:
        the update ``[d]``, the kept clients ``[n]`` bool, the clipping bound ``S`` and whether
        HDBSCAN found no cluster (then every client is kept).
    """
    keep = majority_cluster(cosine_distances(updates))
    all_noise = keep is None
    if keep is None:
        keep = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
    # The median over *all* n updates (numpy-style for even n), as in the paper.
    bound = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64).quantile(0.5)
    clipped, _ = clip_to_norm(updates[keep], bound)
    return weighted_mean(clipped, weights[keep]), keep, bound, all_noise


class FLAME(Aggregator):
    """Cluster out outliers (HDBSCAN, cosine), clip to the median norm, add Gaussian noise.

    Args:
        noise_lambda: the noise level lambda; the noise std is ``lambda * median norm`` (>= 0).
    """

    def __init__(self, noise_lambda: float = 0.001) -> None:
        if noise_lambda < 0:
            raise ValueError(f"aggregator.noise_lambda must be >= 0, got {noise_lambda}")
        self.noise_lambda = noise_lambda

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        update, keep, bound, all_noise = flame(updates, weights)
        update = update + gaussian_noise(update, self.noise_lambda * float(bound), ctx.generator)
        metrics = {
            "clip_bound": float(bound),
            "accepted_fraction": float(keep.float().mean()),
            "all_noise": float(all_noise),
        }
        return AggregationResult(update, accepted=keep, metrics=metrics)
