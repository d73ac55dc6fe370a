"""Multi-Metrics.

Huang, Li, Chen, Shi, Gao, "Multi-metrics adaptively identifies backdoors in Federated
learning", ICCV 2023 (arXiv 2303.06601). Default (``variant="reference"``): what the authors'
code computes (siquanhuang/Multi-metrics, ``defense.py``, class ``Multi_metrics``, called from
``fl_trainer.py``). With ``w_i = G + u_i`` the flattened trainable weights of client ``i``'s
*model* (global weights + update), each client gets three features summed over the other clients:

    x_i = sum_{j != i} ( (1 - cos(w_i, w_j))^2,  ||w_i - w_j||_1,  | ||w_i|| - ||w_j|| | )

The features are scored by ``s_i = x_i^T C^-1 x_i`` with ``C`` the (n - 1)-normalised
covariance of the round's features (numpy's ``cov``); the ``floor(keep * n)`` clients with the
lowest scores are kept (the authors hard-code ``keep = 0.3``) and the new global model is the
sample-weighted mean of their models, i.e. ``G + `` the sample-weighted mean of their updates.

``variant="paper"``: the paper's formulation (as written on the authors' project page,
``index.html`` in the same repository): per-client features relative to the global model,
``(||u_i||_1, ||u_i||_2, cos(G, w_i))``, then for each feature the sum of absolute differences
to the other clients, ``x_i = sum_{j != i} |f_i - f_j|``; scored and kept as above (the page's
``delta_i`` is the square root of ``s_i``, same order; it says the higher-scored, "less
divergent" gradients are kept, which contradicts itself and the code: we keep the lowest).
BackFed's port (thinh-dao/BackFed, ``backfed/servers/anomaly_detection/multi_metrics_server.py``)
computes the reference features, with ``keep = 0.5``.

Where ``C`` is singular (a feature is constant, e.g. equal updates) the authors' inverse fails;
we standardise the features and use the pseudo-inverse, which equals the inverse otherwise. The
Manhattan term is computed on the updates (``w_i - w_j = u_i - u_j``), cosines and norms of the
models in float64. We keep at least one client.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import UnitIntervalOpenLow
from fedsim.aggregators.flame import check_global_weights
from fedsim.aggregators.functional import cosine_distances_from_gram, gram64, weighted_mean

VARIANTS = ("reference", "paper")


def _reference_features(updates: Tensor, shift: Optional[Tensor]) -> Tensor:
    gram = gram64(updates, shift)  # of the models
    cos = cosine_distances_from_gram(gram) ** 2
    manhattan = torch.cdist(updates, updates, p=1.0).double()
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    length = (norms[:, None] - norms[None, :]).abs()
    return torch.stack([cos.sum(1), manhattan.sum(1), length.sum(1)], dim=1)  # [n, 3]


def _paper_features(updates: Tensor, shift: Optional[Tensor], chunk: int = 1 << 20) -> Tensor:
    n, d = updates.shape
    g = torch.zeros(d, device=updates.device) if shift is None else shift
    # Per client, in float64 over column chunks: ||u_i||_1, ||u_i||^2, G.u_i; and G.G.
    man, sq, dot = (torch.zeros(n, dtype=torch.float64, device=updates.device) for _ in range(3))
    gg = torch.zeros((), dtype=torch.float64, device=updates.device)
    for start in range(0, d, chunk):
        u, gb = updates[:, start : start + chunk].double(), g[start : start + chunk].double()
        man += u.abs().sum(1)
        sq += (u * u).sum(1)
        dot += u @ gb
        gg += gb @ gb
    model_norm = (gg + 2 * dot + sq).clamp_min(0.0).sqrt()  # ||G + u_i||
    cos = (gg + dot) / (gg.sqrt() * model_norm).clamp_min(1e-300)  # cos(G, G + u_i); 0 if G = 0
    f = torch.stack([man, sq.sqrt(), cos], dim=1)  # [n, 3]
    return (f[:, None, :] - f[None, :, :]).abs().sum(1)


def multi_metrics_scores(
    updates: Tensor, global_weights: Optional[Tensor] = None, variant: str = "reference"
) -> Tensor:
    """``[n]`` Mahalanobis scores ``x_i^T C^+ x_i``; lower means more typical.

    Args:
        updates: ``[n, d]`` client updates.
        global_weights: ``[d]`` global weights (None: treated as zero, so the models are the
            updates).
        variant: ``"reference"`` (the authors' code) or ``"paper"``.
    """
    n = updates.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.float64, device=updates.device)
    features = (_reference_features if variant == "reference" else _paper_features)(updates, global_weights)
    # Mahalanobis scores do not change when each feature is rescaled; standardising first keeps
    # the pseudo-inverse from truncating a tiny-scaled feature (squared model cosines are ~1e-8).
    std = features.std(dim=0)
    features = features / torch.where(std > 0, std, torch.ones_like(std))
    precision = torch.linalg.pinv(torch.cov(features.T), hermitian=True)
    return ((features @ precision) * features).sum(dim=1)


def multi_metrics_select(
    updates: Tensor, keep: float, global_weights: Optional[Tensor] = None, variant: str = "reference"
) -> Tensor:
    """Indices of the ``max(1, floor(keep * n))`` lowest scores (ties: lower index first)."""
    n = updates.shape[0]
    k = max(1, math.floor(keep * n + 1e-9))  # 1e-9: 0.3 * 10 must keep 3, not 2
    scores = multi_metrics_scores(updates, global_weights, variant)
    return torch.sort(scores, stable=True).indices[:k]


class MultiMetrics(Aggregator):
    """Keep the clients most typical under three whitened distance metrics and average them.

    Args:
        keep: the fraction of clients kept each round, in (0, 1]; the authors' code uses 0.3.
        variant: ``"reference"`` (the authors' code: distances between the clients' models) or
            ``"paper"`` (the paper's equations: distances of each update to the global model,
            compared across clients).
    """

    def __init__(self, keep: UnitIntervalOpenLow = 0.3, variant: Literal["reference", "paper"] = "reference") -> None:
        if not 0 < keep <= 1:
            raise ValueError(f"aggregator.keep must be in (0, 1], got {keep}")
        if variant not in VARIANTS:
            raise ValueError(f"aggregator.variant must be one of {list(VARIANTS)}, got {variant!r}")
        self.keep = keep
        self.variant = variant

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        shift = check_global_weights(ctx, updates, "MultiMetrics")
        idx = multi_metrics_select(updates, self.keep, shift, self.variant)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[idx] = True
        return AggregationResult(weighted_mean(updates[idx], weights[idx]), accepted=accepted)
