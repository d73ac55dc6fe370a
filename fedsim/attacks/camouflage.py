"""Activation camouflage: a loss term that keeps triggered inputs inside the clean activations.

FLAIN (Ding, Yang, Huang, ICMR 2025, arXiv 2408.08655) rests on one observation: a backdoor
lives in input neurons of a layer (default ``fc1``) that clean data leaves dormant and the
trigger activates; flipping those neurons' updates removes it. The same observation underlies
Fine-Pruning (Liu et al., RAID 2018). An attacker who knows it can deny the defense its signal by
training so that no neuron is dormant-on-clean and active-on-trigger. This is the
latent-separability / "defense-aware" regulariser family applied to FLAIN's statistic: e.g.
Doan et al., "Backdoor Attack with Imperceptible Input and Latent Modification", NeurIPS 2021
(WB), and Qi et al., "Revisiting the Assumption of Latent Separability for Backdoor Defenses",
ICLR 2023 (adaptive-blend), both add a term that pulls poisoned latents toward clean ones.

The term (derivation). Let ``a_b`` be sample b's activation of the layer's input neurons
(``[in]``; for a convolution the mean over positions), ``C`` the clean and ``T`` the triggered
samples of the batch, ``m_j = mean_{b in C} a_bj`` (detached) the clean reference, and ``D`` the
``dormant_fraction`` of neurons with the lowest ``m_j >= 0`` (FLAIN flips the lowest first, and
only neurons with a non-negative mean). Then

    L_cam = lam * mean_{b in T} mean_{j in D} relu(a_bj - m_j)

penalises exactly what FLAIN can see: triggered activations above the clean level on
clean-dormant neurons. It is zero when the trigger uses only neurons that clean data also uses,
so the backdoor must be carried by active neurons, whose updates FLAIN does not flip (or flips
at a clean-accuracy cost that stops its threshold search). Batches without clean or without
triggered samples add nothing. The layer's input is recorded during the ordinary forward pass
(a forward pre-hook registered for the client's training only), so no extra forward is run.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.attacks.base import AttackContext, ClientContext, ModelPoison
from fedsim.attacks.layers import check_layer, per_neuron, resolve
from fedsim.attacks.dormancy import lowest
from fedsim.schema import NonNegativeFloat, UnitIntervalOpenLow


class ActivationCamouflage(ModelPoison):
    """Adds ``lam * mean over triggered samples and clean-dormant neurons of relu(a_trig -
    a_clean)`` to the malicious loss (see the module docstring).

    Args:
        layer: the nn.Linear / nn.Conv2d whose input neurons are watched ("fc1": FLAIN's layer).
        lam: weight of the term, >= 0 (0: no term, the attack is its data part alone).
        dormant_fraction: share of the input neurons, lowest mean clean activation in the batch
            first, on which the term acts, in (0, 1] (1: every neuron).
    """

    def __init__(self, layer: str = "fc1", lam: NonNegativeFloat = 1.0, dormant_fraction: UnitIntervalOpenLow = 0.5) -> None:
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"ActivationCamouflage.layer must be a layer name, got {layer!r}")
        if not lam >= 0:
            raise ValueError(f"ActivationCamouflage.lam must be >= 0, got {lam}")
        if not 0.0 < dormant_fraction <= 1.0:
            raise ValueError(f"ActivationCamouflage.dormant_fraction must be in (0, 1], got {dormant_fraction}")
        self.layer, self.lam, self.dormant_fraction = layer, lam, dormant_fraction
        self._handle = None
        self._seen: list[Tensor] = []
        self._module: Optional[nn.Module] = None

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        check_layer("ActivationCamouflage.layer", self.layer, ctx.layout)

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._seen, self._module = None, [], None

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        self._release()
        if self.lam == 0:
            return
        self._module = resolve(model, self.layer)
        self._handle = self._module.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs) -> None:
        self._seen = [inputs[0]]  # only the last forward's input is kept

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor, poisoned: Tensor,
                   ctx: ClientContext) -> Optional[Tensor]:
        if self._handle is None or not self._seen:
            return None
        a = self._seen[0]
        self._seen = []
        if len(a) != len(poisoned) or not poisoned.any() or poisoned.all():
            return None
        term = camouflage_term(per_neuron(a, self._module), poisoned.to(a.device), self.dormant_fraction)
        return None if term is None else self.lam * term

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        self._release()  # the end of this client's training: the hook leaves the shared model
        return update


def camouflage_term(act: Tensor, triggered: Tensor, dormant_fraction: float) -> Optional[Tensor]:
    """``mean_{b triggered} mean_{j in D} relu(act[b, j] - m_j)`` for ``act`` ``[B, in]``, with
    ``m`` the detached mean over the clean rows and ``D`` the ``dormant_fraction`` of neurons
    with the lowest ``m >= 0`` (ties by index); None when no neuron qualifies."""
    ref = act[~triggered].detach().mean(0)
    dormant = lowest(ref, dormant_fraction).nonzero().squeeze(1)
    if dormant.numel() == 0:
        return None
    gap = F.relu(act[triggered][:, dormant] - ref[dormant])
    return gap.mean()
