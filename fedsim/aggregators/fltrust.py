"""FLTrust.

Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021 (arXiv 2012.13995). The server trains the current global model on a small clean root
dataset to get a reference update ``g0``. Each client's trust score is
``ReLU(cos(u_i, g0))``; each update is rescaled to the norm of ``g0``; the aggregate is the
trust-weighted mean of the rescaled updates. An update opposite to ``g0`` gets zero weight, and
no update can contribute more norm than ``g0`` has. Sample weights are ignored, as in the paper.

The root data are ``root_per_class`` samples per class of the server's auxiliary set (the FLAIN
reference scripts used 10 per class of their validation set), the same random ones every round
(``generator(seed, "root")``). They reach the rule through ``ServerContext`` at ``connect``, and
the rule trains its server model itself every round: ``fedsim.clients.local_train`` from the
global model with the clients' settings and the streams of client id -1
(``(seed, round, -1)``). Its model is one copy (``ServerContext.make_model``, made on first use);
every round loads the whole global vector into it (weights and float buffers) and starts a fresh
optimizer, so each round trains exactly as on a fresh copy of the global model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext, ServerContext
from fedsim.clients import local_train
from fedsim.runtime.seeding import generator
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


def root_mask(y: Tensor, per_class: int, seed: int) -> Tensor:
    """Bool mask over the auxiliary labels ``y``: ``per_class`` random samples of every class
    (all of a class that has fewer), drawn with ``generator(seed, "root")``."""
    y = y.cpu()
    order = torch.randperm(len(y), generator=generator(seed, "root"))
    order = order[torch.sort(y[order], stable=True).indices]  # by class, random within
    first = torch.searchsorted(y[order], y[order])  # where each sample's class begins
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[order[torch.arange(len(y)) - first < per_class]] = True
    return mask


class FLTrust(Aggregator):
    """Trust bootstrapping from a server update trained on clean root data.

    Needs the server's auxiliary set, a model and the clients' training settings in the
    ``ServerContext`` given to ``connect`` (the simulation provides them).

    Args:
        root_per_class: root samples per class taken from the auxiliary set (the FLAIN
            reference used 10); None = the whole auxiliary set.
    """

    def __init__(self, root_per_class: Optional[PositiveInt] = 10) -> None:
        if root_per_class is not None and root_per_class < 1:
            raise ValueError(f"aggregator.root_per_class must be >= 1 or null, got {root_per_class}")
        self.root_per_class = root_per_class
        self.root_x = self.root_y = self._model = None

    def connect(self, ctx: ServerContext) -> None:
        """Takes the root set from the auxiliary set; fails before training when it asks for
        more than the auxiliary set holds or the context carries no server data."""
        super().connect(ctx)
        if self.root_per_class is not None and self.root_per_class > ctx.aux_per_class:
            raise ValueError(f"aggregator.root_per_class={self.root_per_class} exceeds the auxiliary set's "
                             f"fed.aux_per_class={ctx.aux_per_class} samples per class; lower it or raise "
                             f"fed.aux_per_class")
        missing = [k for k in ("aux_x", "aux_y", "normalize", "client", "make_model") if getattr(ctx, k) is None]
        if missing:
            raise ValueError(f"FLTrust needs the server's root data: ServerContext lacks {missing}")
        x, y = ctx.aux_x, ctx.aux_y
        if self.root_per_class is not None:
            keep = root_mask(y, self.root_per_class, ctx.seed).to(ctx.device)
            x, y = x[keep], y[keep]
        self.root_x, self.root_y = x, y
        self._model = None  # made on first use: only the rank that aggregates needs it

    def server_update(self, ctx: RoundContext) -> Tensor:
        """g0: the server's model trained from the global model on the root set (the clients'
        settings, client id -1's streams of this round); its trainable-weight update ``[d]``."""
        if getattr(self, "root_x", None) is None or ctx.global_params is None:
            raise ValueError("FLTrust needs the server's root data: connect() it with a ServerContext that has "
                             "the auxiliary set, and give RoundContext.global_params")
        c = self.ctx
        if self._model is None:
            self._model = c.make_model()
        res = local_train(model=self._model, layout=c.layout, global_params=ctx.global_params, x=self.root_x,
                          y=self.root_y, config=c.client, seed=c.seed, round=ctx.round, client_id=-1,
                          normalize=c.normalize)
        return res.update[: c.layout.num_weights]

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        g0 = self.server_update(ctx)
        update, scores = fltrust(updates, g0)
        metrics = {
            "trust_mean": float(scores.mean()),
            "server_update_norm": float(torch.linalg.vector_norm(g0)),
        }
        return AggregationResult(update, accepted=scores > 0, metrics=metrics)
