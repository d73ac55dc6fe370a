"""FoolsGold.

Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020
(arXiv 1808.04866), Algorithm 1, as run by the authors' code (DistributedML/FoolsGold,
``ML/code/ML_main.py`` calling ``foolsgold`` in ``ML/code/model_aggregator.py``). Each round:

1. Every update is scaled down to L2 norm <= 1 (``u_i / ||u_i||`` where ``||u_i|| > 1``); this
   scaled update is what enters the client's history and what is aggregated.
2. The server keeps, per client id, the sum of its scaled updates (its history ``H_i``). With
   ``cs`` the pairwise cosine similarity of the histories (diagonal 0),

       v_i = max_j cs_ij;  cs_ij *= v_i / v_j where v_j > v_i     (pardoning honest look-alikes)
       a_i = 1 - max_j cs_ij, clipped to [0, 1], divided by max_i a_i
       a_i = clip(kappa * (ln(a_i / (1 - a_i)) + 0.5), 0, 1)      (logit; a_i = 1 stays 1)

3. The update is the weighted *sum* ``sum_i a_i u_i`` of the scaled updates (not a mean), added
   to the global model as is (no server learning rate). Sample counts are ignored.

If every ``a_i`` is 0 the update is zero. By design identical clients are all treated as sybils.
The authors' code has no ``kappa`` (the paper's confidence parameter; ``kappa = 1`` matches
the code) and its optional feature-importance weighting and Krum filter are off by default;
neither is implemented here. Their deep-learning variant (``deep-fg/fg/trainer.py``) instead
compares histories of the output layer's raw weight gradients and divides the weighted sum by
``n``. FLPoison's port (vio1etus/FLPoison, ``aggregators/foolsgold.py``) also scales to unit
norm and sums.

Options: ``max_norm=None`` keeps raw updates (no unit-norm scaling; then FoolsGold does not bound
update norms, as this module did before), ``reduction="mean"`` returns
``sum_i a_i u_i / sum_i a_i`` (the learning rates as weights of a mean, as in the FoolsGold port
of siquanhuang/Multi-metrics, ``defense.py``). Note the unit norm is an absolute scale: updates
of several local epochs are usually longer, so the reference default caps every update at norm
1 and the aggregate at ``sum_i a_i <= n``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import PositiveFloat
from fedsim.aggregators.functional import clip_to_norm

REDUCTIONS = ("sum", "mean")


def foolsgold_weights(histories: Tensor, kappa: float = 1.0) -> Tensor:
    """Per-client learning rates ``a[n]`` in [0, 1] from the histories ``[n, d]``."""
    h = histories.double()  # float64: exact duplicates must get cosine 1, as in the paper
    unit = h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(1e-30)
    cs = unit @ unit.T  # [n, n]
    cs.fill_diagonal_(0.0)  # a client is not its own sybil
    v = cs.max(dim=1).values
    # Pardoning: row i is scaled by v_i / v_j in the columns j that look more sybil than i.
    # (v_j may be negative when a history points away from all others: keep its sign.)
    denom = torch.where(v.abs() > 1e-30, v, torch.full_like(v, 1e-30))
    ratio = v[:, None] / denom[None, :]
    cs = torch.where(v[None, :] > v[:, None], cs * ratio, cs)
    a = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    if a.max() <= 0:
        return a.to(histories.dtype)
    a = a / a.max()
    a = torch.where(a >= 1.0, torch.full_like(a, 0.99), a)  # finite logit; maps to >= 1 below
    a = kappa * (torch.log(a / (1.0 - a)) + 0.5)
    return a.clamp(0.0, 1.0).to(histories.dtype)


def foolsgold_combine(updates: Tensor, a: Tensor, reduction: str = "sum") -> Tensor:
    """``sum_i a_i u_i`` (``"sum"``) or that divided by ``sum_i a_i`` (``"mean"``); zero when
    every ``a_i`` is 0."""
    total = (a[:, None] * updates).sum(0)
    if reduction == "sum":
        return total
    return total / a.sum() if a.sum() > 0 else torch.zeros_like(total)


class FoolsGold(Aggregator):
    """Sybil-resistant learning rates from the similarity of per-client update histories.

    The history of every client ever seen is state: it survives ``state_dict`` /
    ``load_state_dict`` (memory: one ``[d]`` vector per client seen).

    Args:
        kappa: the confidence parameter of the logit (> 0); the paper uses 1.
        max_norm: every update is scaled down to this L2 norm before it enters the history and
            the aggregate (> 0; the authors' code uses 1); None keeps raw updates.
        reduction: ``"sum"`` returns ``sum_i a_i u_i`` (the authors' code); ``"mean"`` divides
            it by ``sum_i a_i``.
    """

    def __init__(
        self,
        kappa: PositiveFloat = 1.0,
        max_norm: Optional[PositiveFloat] = 1.0,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        if kappa <= 0:
            raise ValueError(f"aggregator.kappa must be > 0, got {kappa}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"aggregator.max_norm must be > 0 or None, got {max_norm}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"aggregator.reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        self.kappa = kappa
        self.max_norm = max_norm
        self.reduction = reduction
        self.history: dict[int, Tensor] = {}

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        if self.max_norm is not None:
            updates, _ = clip_to_norm(updates, self.max_norm)
        rows = []
        for cid, u in zip((int(c) for c in ctx.client_ids), updates):
            past = self.history.get(cid)
            self.history[cid] = u.detach().clone() if past is None else past.to(u) + u
            rows.append(self.history[cid])
        a = foolsgold_weights(torch.stack(rows), self.kappa)
        update = foolsgold_combine(updates, a, self.reduction)
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
