"""Ratio-aware backdoor: an attacker who knows FLAIN ranks neurons by update ratio.

``flain.FLAIN(rank="update_ratio")`` (``flain.functional.update_ratio_order``) flips first the
input neurons j of a layer whose accumulated update column is large for their mean clean
activation: ``s_j = ||D[:, j]|| / (a_j + eps * mean_{a > 0} a)``. It was built against
``fedsim.attacks.DormancyAware``, whose backdoor has to live in a few clean-active columns that
then move far more than their activation explains. This part is the attacker who knows that
variant: it keeps every column of its own update within the ratio its other columns show.

The attack. Before training (``before_training``) the attacker measures ``a_j`` of the current
global model on its own clean data, as ``DormancyAware`` does. After every optimiser step, and on
the final update, it computes for its update ``u = W - W_global`` of the layer the column norms
``n_j = ||u[:, j]||`` and ratios ``r_j = n_j / (a_j + eps * mean_{a > 0} a)``, takes the
``quantile`` of the ratios over the clean-active columns it updates (``a_j > 0``, ``n_j > 0``:
columns that another part holds at zero, e.g. ``DormancyAware``'s, do not count) as the benign-looking
ratio ``c``, and shrinks every column whose ratio exceeds ``slack * c`` to exactly that ratio
(a projection, like ``PGD`` per column). On clean data the gradient of column j is
``sum_b delta_b a_bj``, so most of the update's columns carry ratios of the honest kind; the
quantile of them is what an honest client would send, and the backdoor must be spread over many
columns in proportion to their clean activation instead of concentrated in a few. Columns of
dormant neurons (``a_j = 0``) are capped at ``slack * c * eps * mean a``: nearly zero, as
``DormancyAware`` makes them. The update ratio is the defender's statistic; ``eps`` should be the
defender's ``rank_eps`` (0.01 by default; the attacker is assumed to know it).

No paper proposes this attack: it is the adaptive step against our own variant, in the spirit of
the defense-aware attacks of Wang et al., "Attack of the Tails", NeurIPS 2020 (projected updates
that look benign to a norm statistic) and of the pruning-aware attack of Liu, Dolan-Gavitt, Garg,
"Fine-Pruning", RAID 2018, which ``DormancyAware`` adapts.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from fedsim.attacks.base import ClientContext
from fedsim.attacks.layers import ActivationAware
from fedsim.schema import PositiveFloat, PositiveInt, UnitInterval


def cap_ratios(u: Tensor, act: Tensor, quantile: float, slack: float, eps: float) -> Tensor:
    """``u`` (``[out, in, ...]``, input neurons on dim 1) with every column whose update ratio
    ``||u[:, j]|| / (act_j + eps * mean_{act > 0} act)`` exceeds ``slack`` times the ``quantile``
    of the ratios over the columns with ``act_j > 0`` and a non-zero update scaled down to exactly that bound; the
    other columns are returned unchanged. With no active column ``u`` is returned as is."""
    dims = [d for d in range(u.dim()) if d != 1]
    norms = u.double().pow(2).sum(dims).sqrt()
    if not (act > 0).any():
        return u
    denom = act.double().clamp_min(0) + eps * act[act > 0].double().mean()
    active = (act > 0) & (norms > 0)  # columns another part holds at zero (DormancyAware) do not count
    if not active.any():
        return u
    ratio = norms / denom
    bound = slack * torch.quantile(ratio[active], quantile)
    scale = torch.where(ratio > bound, bound / ratio.clamp_min(1e-300), torch.ones_like(ratio))
    shape = [1] * u.dim()
    shape[1] = -1
    return u * scale.to(u.dtype).view(shape)


class RatioAware(ActivationAware):
    """Keeps the update ratio of every input column of ``layers`` at or below ``slack`` times the
    ``quantile`` of the client's own clean-active columns' ratios (the attacker who knows
    ``flain.FLAIN(rank="update_ratio")``; see the module docstring).

    Args:
        layers: names of the nn.Linear / nn.Conv2d layers to constrain ("fc1": FLAIN's layer).
        quantile: the quantile of the active columns' ratios taken as the benign ratio, in [0, 1].
        slack: the bound is ``slack`` times that ratio (> 0; 1: no column above the quantile).
        eps: the activation floor as a fraction of the mean positive activation (the defender's
            ``rank_eps``).
        batch_size: batch size of the measuring forward passes.
    """

    def __init__(self, layers: Union[str, Sequence[str]] = ("fc1",), quantile: UnitInterval = 0.5,
                 slack: PositiveFloat = 1.0, eps: PositiveFloat = 0.01, batch_size: PositiveInt = 512) -> None:
        super().__init__(layers, batch_size)
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"RatioAware.quantile must be in [0, 1], got {quantile}")
        if not slack > 0:
            raise ValueError(f"RatioAware.slack must be > 0, got {slack}")
        if not eps > 0:
            raise ValueError(f"RatioAware.eps must be > 0, got {eps}")
        self.quantile, self.slack, self.eps = quantile, slack, eps

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        self.measure(model, x, normalize, ctx)

    def _known(self, ctx: ClientContext) -> dict[str, Tensor]:
        return self.activations if self.known(ctx) else {}

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        params = dict(model.named_parameters())
        for name, act in self._known(ctx).items():
            entry = self.actx.layout[f"{name}.weight"]
            p = params[entry.name]
            g = ctx.global_weights[entry.slice].view(entry.shape).to(p.device)
            p.copy_(g + cap_ratios(p - g, act.to(p.device), self.quantile, self.slack, self.eps))

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        known = self._known(ctx)
        if not known:
            return update
        update = update.clone()
        for name, act in known.items():
            entry = self.actx.layout[f"{name}.weight"]
            view = update[entry.slice].view(entry.shape)
            view.copy_(cap_ratios(view, act.to(view.device), self.quantile, self.slack, self.eps))
        return update
