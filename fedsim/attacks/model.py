"""Model poisoning: scaling (model replacement), PGD norm projection, Neurotoxin masks.

Papers:
- Scaling / model replacement: Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor
  Federated Learning", AISTATS 2020 (arXiv 1807.00459). The update is multiplied by
  gamma = n / eta (cohort size over server learning rate) so that it survives averaging.
- PGD: Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning",
  NeurIPS 2020 (arXiv 2007.05084); also Sun et al., arXiv 1911.07963. The malicious model is
  projected onto the L2 ball of radius eps around the global model so that norm-based defenses
  do not see it.
- Neurotoxin: Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022.
  The attacker only changes coordinates that benign clients rarely change: those outside the
  top-k% by magnitude of the last global update (its proxy for the benign gradient).

All operate on trainable weights only; buffers (BatchNorm statistics) are never touched.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from fedsim.attacks.base import ClientContext, ModelPoison
from fedsim.attacks.schedule import fraction_count
from fedsim.params import ParamLayout
from fedsim.schema import PositiveFloat, PositiveInt, UnitIntervalOpenHigh


def _weights_with(model: nn.Module, layout: ParamLayout, vec: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Pairs each trainable parameter with its slice of ``vec`` ``[num_weights]``, reshaped."""
    entries = [e for e in layout.entries if e.trainable]
    for p, e in zip(model.parameters(), entries):
        yield p, vec[e.slice].view(e.shape)


class Scaling(ModelPoison):
    """Multiplies the malicious update by ``gamma`` (Bagdasaryan et al. 2020).

    Args:
        gamma: scale factor > 0; None: cohort size / server learning rate (model replacement).
    """

    def __init__(self, gamma: Optional[PositiveFloat] = None) -> None:
        if gamma is not None and not gamma > 0:
            raise ValueError(f"Scaling.gamma must be > 0 or None, got {gamma}")
        self.gamma = gamma

    def factor(self, ctx: ClientContext) -> float:
        return self.gamma if self.gamma is not None else ctx.cohort_size / self.actx.server_lr

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        gamma = self.factor(ctx)
        return update if gamma == 1 else update * gamma


class PGD(ModelPoison):
    """Projects the malicious weights onto the L2 ball of radius ``eps`` around the global
    weights every ``every`` optimiser steps, and the final update onto the same ball
    (Wang et al., NeurIPS 2020).

    Args:
        eps: radius of the ball (L2 norm of the weight update), > 0.
        every: project after every this many local steps.
    """

    def __init__(self, eps: PositiveFloat, every: PositiveInt = 1) -> None:
        if not eps > 0:
            raise ValueError(f"PGD.eps must be > 0, got {eps}")
        if every < 1:
            raise ValueError(f"PGD.every must be >= 1, got {every}")
        self.eps, self.every = eps, every
        self._client: Optional[tuple[int, int]] = None
        self._steps = 0

    def _scale(self, norm: Tensor) -> Tensor:
        return torch.clamp(self.eps / (norm + 1e-12), max=1.0)

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        if self._client != (ctx.round, ctx.client_id):  # a new client: restart the step count
            self._client, self._steps = (ctx.round, ctx.client_id), 0
        self._steps += 1
        if self._steps % self.every:
            return
        pairs = list(_weights_with(model, self.actx.layout, ctx.global_weights))
        norm = torch.sqrt(sum(((p - g) ** 2).sum() for p, g in pairs))
        scale = self._scale(norm)
        for p, g in pairs:
            p.copy_(g + (p - g) * scale)

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        return update * self._scale(update.norm())


class Neurotoxin(ModelPoison):
    """Restricts the malicious update to coordinates outside the top ``top_k`` fraction of
    the previous global update by magnitude (Zhang et al., ICML 2022).

    The paper masks the gradient before each step; we project the weight change onto the mask
    after each step (coordinates outside it are reset to the global weights), which is the same
    for plain SGD and also keeps momentum and weight decay from leaking outside the mask. The
    final update is masked again, so it is exactly zero outside the mask. In the first round
    (no previous global update) every coordinate is allowed. Ties at the top-k boundary are
    broken by ``torch.topk``.

    Args:
        top_k: fraction of coordinates (largest |previous global update|) left alone, in [0, 1).
    """

    def __init__(self, top_k: UnitIntervalOpenHigh = 0.1) -> None:
        if not 0.0 <= top_k < 1.0:
            raise ValueError(f"Neurotoxin.top_k must be in [0, 1), got {top_k}")
        self.top_k = top_k
        self._source: Optional[Tensor] = None
        self._mask: Optional[Tensor] = None

    def mask(self, ctx: ClientContext) -> Optional[Tensor]:
        """Bool ``[num_weights]``: the coordinates the attacker may change; None means all."""
        prev = ctx.prev_global_update
        if prev is None:
            return None
        if self._source is not prev:  # one top-k per previous global update, not per step
            prev = prev[: self.actx.layout.num_weights].abs()
            k = fraction_count(self.top_k, prev.numel())
            mask = torch.ones_like(prev, dtype=torch.bool)
            mask[torch.topk(prev, k).indices] = False
            self._source, self._mask = ctx.prev_global_update, mask
        return self._mask

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        mask = self.mask(ctx)
        if mask is None:
            return
        pairs = _weights_with(model, self.actx.layout, ctx.global_weights)
        masks = _weights_with(model, self.actx.layout, mask)
        for (p, g), (_, m) in zip(pairs, masks):
            p.copy_(torch.where(m, p, g))

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        mask = self.mask(ctx)
        return update if mask is None else torch.where(mask, update, torch.zeros_like(update))
