"""Norm clipping with optional weak differential privacy.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", arXiv 1911.07963
(2019). Each update is scaled down to L2 norm at most ``max_norm``; the clipped updates are
averaged with sample weights; "weak DP" then adds Gaussian noise ``N(0, noise_std^2)`` to every
coordinate of the aggregate. The paper studies norm bounds of a few units (e.g. 3) and
``noise_std = 0.025``; our default adds no noise.
"""

from __future__ import annotations

from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import NonNegativeFloat, PositiveFloat
from fedsim.aggregators.functional import clip_to_norm, gaussian_noise, weighted_mean


class NormClipping(Aggregator):
    """Clip every update to ``max_norm``, take the weighted mean, optionally add noise.

    Args:
        max_norm: the L2 bound M on each client update (> 0).
        noise_std: standard deviation of the Gaussian noise added to the aggregate (>= 0);
            0 turns weak DP off.
    """

    def __init__(self, max_norm: PositiveFloat = 3.0, noise_std: NonNegativeFloat = 0.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"aggregator.max_norm must be > 0, got {max_norm}")
        if noise_std < 0:
            raise ValueError(f"aggregator.noise_std must be >= 0, got {noise_std}")
        self.max_norm = max_norm
        self.noise_std = noise_std

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        clipped, norms = clip_to_norm(updates, self.max_norm)
        update = weighted_mean(clipped, weights)
        update = update + gaussian_noise(update, self.noise_std, ctx.generator)
        metrics = {"clipped_fraction": float((norms > self.max_norm).float().mean())}
        return AggregationResult(update, metrics=metrics)
