"""FLTrust.

Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021 (arXiv 2012.13995). The server trains the current global model on a small clean root
dataset to get a reference update ``g0``. Each client's trust score is
``ReLU(cos(u_i, g0))``; each update is rescaled to the norm of ``g0``; the aggregate is the
trust-weighted mean of the rescaled updates. An update opposite to ``g0`` gets zero weight, and
no update can contribute more norm than ``g0`` has. Sample weights are ignored, as in the paper.

The root data is whatever ``RoundContext.server_update`` trains on (the server's auxiliary
data). The FLAIN reference scripts used 10 samples per class drawn from the validation set.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import PositiveInt


def fltrust(updates: Tensor, server_update: Tensor) -> tuple[Tensor, Tensor]:
    """Trust-weighted mean of the updates rescaled to ``||server_update||``.

    Returns:
        the update ``[d]`` and the trust scores ``[n]``. If every score is zero the update is
        zero (no client is trusted).
    """
    g0 = server_update.to(updates)
    g0_norm = torch.linalg.vector_norm(g0)
    norms = torch.linalg.vector_norm(updates, dim=1)
    # A zero-norm update (or a zero g0) has no direction: it gets no trust.
    scores = torch.relu((updates @ g0) / (norms * g0_norm).clamp_min(1e-30))
    total = scores.sum()
    if total <= 0:
        return torch.zeros_like(updates[0]), scores
    # Each row rescaled to ||g0||, then the trust-weighted mean; coefficient c_i per row.
    coeff = scores * g0_norm / norms.clamp_min(1e-30) / total
    return (coeff[:, None] * updates).sum(0), scores


class FLTrust(Aggregator):
    """Trust bootstrapping from a server update trained on clean root data.

    Needs ``RoundContext.server_update`` (the simulation trains a copy of the global model on
    the server's auxiliary data with the clients' local-training settings).

    Args:
        root_per_class: root samples per class taken from the auxiliary set (the FLAIN
            reference used 10); None = the whole auxiliary set.
    """

    def __init__(self, root_per_class: Optional[PositiveInt] = 10) -> None:
        if root_per_class is not None and root_per_class < 1:
            raise ValueError(f"aggregator.root_per_class must be >= 1 or null, got {root_per_class}")
        self.root_per_class = root_per_class

    def connect(self, ctx) -> None:
        """Fails before training when the root set asks for more than the auxiliary set holds."""
        super().connect(ctx)
        if self.root_per_class is not None and self.root_per_class > ctx.aux_per_class:
            raise ValueError(f"aggregator.root_per_class={self.root_per_class} exceeds the auxiliary set's "
                             f"fed.aux_per_class={ctx.aux_per_class} samples per class; lower it or raise "
                             f"fed.aux_per_class")

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        if ctx.server_update is None:
            raise ValueError("FLTrust needs server root data: RoundContext.server_update is None")
        g0 = ctx.server_update(self.root_per_class)
        update, scores = fltrust(updates, g0)
        metrics = {
            "trust_mean": float(scores.mean()),
            "server_update_norm": float(torch.linalg.vector_norm(g0)),
        }
        return AggregationResult(update, accepted=scores > 0, metrics=metrics)
