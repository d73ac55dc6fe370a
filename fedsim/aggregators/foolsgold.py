"""FoolsGold.

Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020
(arXiv 1808.04866). The server keeps, per client id, the sum of all updates that client has sent
(its history). Clients whose histories point the same way (sybils pushing one backdoor) get
their learning rates cut: with ``cs`` the pairwise cosine similarity of histories,

    v_i = max_j cs_ij;  cs_ij *= v_i / v_j where v_j > v_i     (pardoning honest look-alikes)
    a_i = 1 - max_j cs_ij, clipped to [0, 1], divided by max_i a_i
    a_i = clip(kappa * (ln(a_i / (1 - a_i)) + 0.5), 0, 1)      (logit; a_i = 1 stays 1)

The update is ``sum_i a_i u_i / sum_i a_i`` (sample counts are ignored, as in the paper); if
every ``a_i`` is 0 it is zero. By design identical clients are all treated as sybils. The paper's
optional feature-importance weighting is not implemented. FoolsGold does not bound update norms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext


def foolsgold_weights(histories: Tensor, kappa: float = 1.0) -> Tensor:
    """Per-client learning rates ``a[n]`` in [0, 1] from the histories ``[n, d]``."""
    h = histories.double()  # float64: exact duplicates must get cosine 1, as in the paper
    unit = h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(1e-30)
    cs = unit @ unit.T  # [n, n]
    cs.fill_diagonal_(0.0)  # a client is not its own sybil
    v = cs.max(dim=1).values
    # Pardoning: row i is scaled by v_i / v_j in the columns j that look more sybil than i.
    ratio = v[:, None] / v[None, :].clamp_min(1e-30)
    cs = torch.where(v[None, :] > v[:, None], cs * ratio, cs)
    a = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    if a.max() <= 0:
        return a.to(histories.dtype)
    a = a / a.max()
    a = torch.where(a >= 1.0, torch.full_like(a, 0.99), a)  # finite logit; maps to >= 1 below
    a = kappa * (torch.log(a / (1.0 - a)) + 0.5)
    return a.clamp(0.0, 1.0).to(histories.dtype)


class FoolsGold(Aggregator):
    """Sybil-resistant learning rates from the similarity of per-client update histories.

    The history of every client ever seen is state: it survives ``state_dict`` /
    ``load_state_dict`` (memory: one ``[d]`` vector per client seen).

    Args:
        kappa: the confidence parameter of the logit (> 0); the paper uses 1.
    """

    def __init__(self, kappa: float = 1.0) -> None:
        if kappa <= 0:
            raise ValueError(f"aggregator.kappa must be > 0, got {kappa}")
        self.kappa = kappa
        self.history: dict[int, Tensor] = {}

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        ids = [int(c) for c in ctx.client_ids]
        rows = []
        for cid, u in zip(ids, updates):
            past = self.history.get(cid)
            self.history[cid] = u.detach().clone() if past is None else past.to(u) + u
            rows.append(self.history[cid])
        a = foolsgold_weights(torch.stack(rows), self.kappa)
        if a.sum() <= 0:
            update = torch.zeros_like(updates[0])
        else:
            update = (a[:, None] * updates).sum(0) / a.sum()
        return AggregationResult(update, accepted=a > 0, metrics={"lr_mean": float(a.mean())})

    def state_dict(self) -> dict[str, Any]:
        ids = sorted(self.history)
        if not ids:
            return {"client_ids": torch.zeros(0, dtype=torch.long), "history": torch.zeros(0, 0)}
        history = torch.stack([self.history[c].cpu() for c in ids])
        return {"client_ids": torch.tensor(ids, dtype=torch.long), "history": history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids, history = state["client_ids"], state["history"]
        self.history = {int(c): h.clone() for c, h in zip(ids, history)}
