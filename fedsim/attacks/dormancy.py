"""Dormancy-aware backdoor: keep the malicious update out of the neurons FLAIN will flip.

Idea: Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks", RAID 2018, the "pruning-aware attack": an attacker who knows that the
defender prunes the neurons clean data leaves dormant first prunes them itself, trains the
backdoor into the remaining (clean-active) neurons, then restores the pruned ones, so that the
defender's pruning removes nothing of the backdoor. Adapted here to FLAIN (Ding, Yang, Huang,
ICMR 2025, arXiv 2408.08655), which does not prune but flips the accumulated update
``W_T[:, j] - W_0[:, j]`` of the input neurons j of a layer (default ``fc1``) whose mean clean
activation ``a_j`` is below a threshold k (raised while the auxiliary accuracy holds).

The attack. Before training, the attacker measures ``a_j`` of the *current global model* on its
own clean data (``before_training``), and marks as dormant the ``dormant_fraction`` of the
layer's input neurons with the lowest ``a_j`` (ties broken by index). FLAIN only ever flips
neurons with ``0 <= a_j <= k``, so a neuron with a negative mean (possible where the layer's
input is not a ReLU output, e.g. ``TinyNet.fc1`` on normalised pixels) is never marked. During training it resets
the weight columns ``W[:, j]`` of those neurons to the global weights after every step (a
projection, like ``Neurotoxin``), so the rest of the network learns the backdoor through active
neurons; the final update of those columns is exactly zero. Everything else (other layers, the
layer's bias and its active columns) trains freely.

Why zero, and not "an honest update", in the dormant columns: the gradient of the loss with
respect to column j of a linear layer is ``sum_b delta_b a_bj`` (``delta_b`` the back-propagated
error of sample b, ``a_bj`` its activation of input j), so on clean data the honest update of a
column is proportional to how active its neuron is. A dormant neuron's honest update is ~0, and
a zero column is what a benign client would send. FLAIN then flips (near-)zero updates, which
changes nothing of the backdoor.

Default ``dormant_fraction = 0.5``: FLAIN flipped 9-31% of fc1's 3,136 input neurons in the
runs measured here (README and docs/benchmarks.md: 289-975 of 3136; the quickstart with one-to-one
BadNets: 405-414); the attacker does not know k, so it leaves a margin and gives up the lower half
of the neurons (whose honest updates are the smallest anyway). FLAIN's k is not fixed, though:
it rises while the aux accuracy holds, and it flips more neurons when the attacker left them alone.

Trade-off (measured on the quickstart): the columns of clean-dormant neurons are the ones benign
clients rarely change, which is why backdoors placed there last (Neurotoxin's argument); confined
to clean-active columns, the backdoor is rewritten by the benign updates every round, and a
corner trigger that only reaches clean-dormant positions of fc1's input barely gets in. Combined
with ``Scaling`` it gets in, and it then largely survives FLAIN.

With ``layers`` naming several layers (FLAIN's ``layers: [fc1, fc2]``) each one is confined to
its own clean-active inputs, measured in one pass over the data.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from fedsim.attacks.base import ClientContext
from fedsim.attacks.layers import ActivationAware
from fedsim.attacks.schedule import fraction_count
from fedsim.schema import PositiveInt, UnitIntervalOpenHigh


class DormancyAware(ActivationAware):
    """Confines the malicious update of ``layers`` to the input neurons that are active on the
    attacker's clean data under the current global model (pruning-aware attack of Liu et al.,
    RAID 2018, adapted to FLAIN; see the module docstring).

    Args:
        layers: names of the nn.Linear / nn.Conv2d layers to confine ("fc1": FLAIN's default
            layer; list several to match a FLAIN that repairs several).
        dormant_fraction: share of each layer's input neurons, lowest mean clean activation
            first, whose weight columns the attacker leaves at the global weights (update
            exactly zero), in [0, 1). 0 disables the constraint.
        batch_size: batch size of the measuring forward passes.
    """

    def __init__(self, layers: Union[str, Sequence[str]] = ("fc1",), dormant_fraction: UnitIntervalOpenHigh = 0.5,
                 batch_size: PositiveInt = 512) -> None:
        super().__init__(layers, batch_size)
        if not 0.0 <= dormant_fraction < 1.0:
            raise ValueError(f"DormancyAware.dormant_fraction must be in [0, 1), got {dormant_fraction}")
        self.dormant_fraction = dormant_fraction
        self.dormant: dict[str, Tensor] = {}  # layer -> bool [in] of this client's dormant neurons

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        acts = self.measure(model, x, normalize, ctx, skip=self.dormant_fraction == 0)
        self.dormant = {name: lowest(act, self.dormant_fraction) for name, act in acts.items()}

    def _columns(self, ctx: ClientContext):
        """(layout entry, bool [in]) of each confined layer, for the client being trained."""
        if not self.known(ctx):
            return []  # before_training was not called for this client (direct use): nothing known
        return [(self.actx.layout[f"{name}.weight"], mask) for name, mask in self.dormant.items()]

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        params = dict(model.named_parameters())
        for entry, mask in self._columns(ctx):
            p = params[entry.name]
            g = ctx.global_weights[entry.slice].view(entry.shape)
            m = mask.to(p.device)
            p[:, m] = g[:, m]

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        columns = self._columns(ctx)
        if not columns:
            return update
        update = update.clone()
        for entry, mask in columns:
            update[entry.slice].view(entry.shape)[:, mask.to(update.device)] = 0
        return update

    def mask(self, ctx: ClientContext) -> Optional[Tensor]:
        """Bool ``[num_weights]``: the coordinates this client leaves unchanged; None before
        ``before_training`` measured them."""
        columns = self._columns(ctx)
        if not columns:
            return None
        frozen = torch.zeros(self.actx.layout.num_weights, dtype=torch.bool)
        for entry, mask in columns:
            frozen[entry.slice].view(entry.shape)[:, mask.cpu()] = True
        return frozen


def lowest(act: Tensor, fraction: float) -> Tensor:
    """Bool ``[in]``: the ``fraction`` of all neurons with the lowest mean activation, chosen
    among those with ``act >= 0`` (FLAIN flips only ``0 <= a_j <= k``; ties by neuron index)."""
    k = fraction_count(fraction, act.numel())
    key = torch.where(act >= 0, act, torch.full_like(act, float("inf")))
    order = torch.sort(key, stable=True).indices[: min(k, int((act >= 0).sum()))]
    mask = torch.zeros_like(act, dtype=torch.bool)
    mask[order] = True
    return mask
