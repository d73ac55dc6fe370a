"""FLAME.

Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022
(arXiv 2101.02281), Algorithm 1. With ``G`` the global weights and ``W_i = G + u_i`` the local
models of the round's ``n`` clients:

1. Filter: pairwise cosine distances ``1 - cos(W_i, W_j)`` of the *models*, HDBSCAN with
   ``min_cluster_size = n // 2 + 1`` (``min_samples = 1`` and ``allow_single_cluster`` as in the
   re-implementations below); the clients of the majority cluster are admitted.
2. Clip: ``S = median_i ||W_i - G|| = median_i ||u_i||`` over *all* ``n`` clients; every admitted
   update is scaled by ``min(1, S / ||u_i||)``.
3. Aggregate: ``G' = G + (1 / L) sum_admitted clip(u_i)``, equal weights over the ``L`` admitted
   clients (sample counts are not used).
4. Noise: ``G' + N(0, sigma^2)`` per coordinate, ``sigma = lambda * S`` (Algorithm 1, lines
   13-14); the paper uses ``lambda = 0.001`` for image classification.

The authors released no code. We compared against the paper and two re-implementations:
FLPoison (vio1etus/FLPoison, ``aggregators/flame.py``) clusters the models and clips to the
median over all clients, as above, but scales each tensor's noise by that tensor's standard
deviation; BackFed (thinh-dao/BackFed, ``backfed/servers/anomaly_detection/flame_server.py``)
clusters the updates, clips to the median over all clients, averages with equal weights, adds
``N(0, (lambda * S)^2)`` and applies the result with a server learning rate of 0.5.

``cluster_on="updates"`` (cosine of the updates ``u_i``) and ``weighting="samples"`` (sample-
weighted mean of the admitted updates) keep this module's earlier behaviour as options. Updates
hold trainable weights only (never BatchNorm statistics; see ``fedsim.params``). If HDBSCAN
labels every client as noise (the paper does not say what then), every client is admitted and
the metric ``all_noise`` is 1.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import NonNegativeFloat
from fedsim.aggregators.functional import (
    clip_to_norm,
    cosine_distances_from_gram,
    gaussian_noise,
    gram64,
    weighted_mean,
)

CLUSTER_ON = ("models", "updates")
WEIGHTING = ("equal", "samples")


def cosine_distances(updates: Tensor, shift: Optional[Tensor] = None) -> Tensor:
    """``[n, n]`` float64 matrix of ``1 - cos`` between the rows ``shift + updates[i]`` (the
    models when ``shift`` is the global weights, the updates when it is None)."""
    return cosine_distances_from_gram(gram64(updates, shift))


def majority_cluster(dist: Tensor) -> Tensor | None:
    """``[n]`` bool: members of the largest HDBSCAN cluster; ``None`` if all are noise.
    With ``min_cluster_size = n // 2 + 1`` there is at most one cluster."""
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


def flame(
    updates: Tensor,
    weights: Tensor,
    global_weights: Optional[Tensor] = None,
    weighting: str = "equal",
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Steps 1-3 of FLAME, without noise.

    Args:
        updates: ``[n, d]`` client updates.
        weights: ``[n]`` sample counts (used only with ``weighting="samples"``).
        global_weights: ``[d]`` global weights: cluster the models ``G + u_i``; None clusters
            the updates themselves.
        weighting: ``"equal"`` (the paper) or ``"samples"``.

    Returns:
        the update ``[d]``, the admitted clients ``[n]`` bool, the clipping bound ``S`` and
        whether HDBSCAN found no cluster (then every client is admitted).
    """
    keep = majority_cluster(cosine_distances(updates, global_weights))
    all_noise = keep is None
    if keep is None:
        keep = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
    # The median over *all* n clients (numpy-style for even n), as in the paper.
    bound = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64).quantile(0.5)
    clipped, _ = clip_to_norm(updates[keep], bound)
    w = weights[keep] if weighting == "samples" else torch.ones_like(weights[keep])
    return weighted_mean(clipped, w), keep, bound, all_noise


class FLAME(Aggregator):
    """Cluster out outliers (HDBSCAN, cosine), clip to the median norm, add Gaussian noise.

    Args:
        noise_lambda: the noise level lambda; the noise std is ``lambda * median norm`` (>= 0).
        cluster_on: ``"models"`` (global weights + update, as in the paper) or ``"updates"``.
        weighting: ``"equal"`` (the mean of the admitted clipped updates, as in the paper) or
            ``"samples"`` (weighted by the clients' sample counts).
    """

    def __init__(
        self,
        noise_lambda: NonNegativeFloat = 0.001,
        cluster_on: Literal["models", "updates"] = "models",
        weighting: Literal["equal", "samples"] = "equal",
    ) -> None:
        if noise_lambda < 0:
            raise ValueError(f"aggregator.noise_lambda must be >= 0, got {noise_lambda}")
        if cluster_on not in CLUSTER_ON:
            raise ValueError(f"aggregator.cluster_on must be one of {list(CLUSTER_ON)}, got {cluster_on!r}")
        if weighting not in WEIGHTING:
            raise ValueError(f"aggregator.weighting must be one of {list(WEIGHTING)}, got {weighting!r}")
        self.noise_lambda = noise_lambda
        self.cluster_on = cluster_on
        self.weighting = weighting

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        shift = None
        if self.cluster_on == "models":
            shift = check_global_weights(ctx, updates, "FLAME(cluster_on='models')")
        update, keep, bound, all_noise = flame(updates, weights, shift, self.weighting)
        update = update + gaussian_noise(update, self.noise_lambda * float(bound), ctx.generator)
        metrics = {
            "clip_bound": float(bound),
            "accepted_fraction": float(keep.float().mean()),
            "all_noise": float(all_noise),
        }
        return AggregationResult(update, accepted=keep, metrics=metrics)


def check_global_weights(ctx: RoundContext, updates: Tensor, rule: str) -> Tensor:
    """``ctx.global_weights`` as a ``[d]`` tensor on the updates' device; rules that compare
    models need it to match the update rows."""
    g = ctx.global_weights
    if g is None or g.shape != updates.shape[1:]:
        shape = None if g is None else tuple(g.shape)
        raise ValueError(f"{rule} needs ctx.global_weights of shape ({updates.shape[1]},), got {shape}")
    return g.to(updates.device)
