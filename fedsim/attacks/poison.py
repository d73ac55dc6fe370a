"""Targeted data poisoning: the shared sampling rule, label flipping and edge-case relabelling.

Every data poison here relabels a chosen share of a batch to ``target`` and, for backdoors,
stamps a trigger (``fedsim.attacks.backdoor``). Which samples are *eligible*:

- one-to-one (``source_class`` set): samples of the source class only (the FLAIN scripts poison
  class 0 -> 5);
- all-to-one (``source_class=None``): every sample whose label is not already the target
  (poisoning a target-class sample would only add the trigger, and the ASR never counts them);
- ``EdgeCase``: samples whose label is in ``classes``.

``poison_batch`` poisons exactly ``floor(poison_fraction * eligible + 0.5)`` eligible samples
(round half up), chosen with the client's generator; with none to poison it returns the batch
objects untouched and draws nothing, so strength zero reproduces the honest run bit for bit.

Papers: label flipping, Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
Systems", ESORICS 2020; edge-case backdoors, Wang et al., "Attack of the Tails: Yes, You Really
Can Backdoor Federated Learning", NeurIPS 2020 (arXiv 2007.05084). Our ``EdgeCase`` takes its
sub-population from the client's own data (e.g. a rare class), not from external images.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fedsim.attacks.base import AttackContext, ClientContext, DataPoison
from fedsim.attacks.schedule import fraction_count
from fedsim.schema import NonNegativeInt, UnitInterval


def _check_class(owner: str, name: str, value: Optional[int]) -> None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"{owner}.{name} must be a non-negative int, got {value!r}")


class TargetedPoison(DataPoison):
    """Base class: relabel eligible samples to ``target``; subclasses add a trigger.

    Args:
        target: the attacker's target label.
        source_class: one-to-one attack from this class; None means all-to-one.
        poison_fraction: share of the eligible samples of each batch to poison, in [0, 1].
    """

    def __init__(
        self, target: NonNegativeInt = 5, source_class: Optional[NonNegativeInt] = None,
        poison_fraction: UnitInterval = 0.5,
    ) -> None:
        name = type(self).__name__
        _check_class(name, "target", target)
        _check_class(name, "source_class", source_class)
        if source_class is not None and source_class == target:
            raise ValueError(f"{name}.source_class must differ from {name}.target, both are {target}")
        if not 0.0 <= poison_fraction <= 1.0:
            raise ValueError(f"{name}.poison_fraction must be in [0, 1], got {poison_fraction}")
        self.target = target
        self.source_class = source_class
        self.poison_fraction = poison_fraction

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        for field, value in self._classes().items():
            if value >= ctx.num_classes:
                raise ValueError(
                    f"{type(self).__name__}.{field} must be < num_classes={ctx.num_classes}, got {value}"
                )

    def _classes(self) -> dict[str, int]:
        """The class indices to check against ``num_classes``, by field name."""
        named = {"target": self.target}
        if self.source_class is not None:
            named["source_class"] = self.source_class
        return named

    def eligible(self, y: Tensor) -> Tensor:
        """Bool mask ``[N]`` of the samples this attack may poison (and whose ASR counts)."""
        if self.source_class is not None:
            return y == self.source_class
        return y != self.target

    def apply_trigger(self, x: Tensor, ctx: Optional[ClientContext]) -> Tensor:
        """Triggered copy of ``x`` ``[n, C, H, W]``; ``ctx`` None means the full test trigger."""
        return x

    def poison_batch(self, x: Tensor, y: Tensor, ctx: ClientContext, gen: torch.Generator):
        candidates = self.eligible(y).nonzero().flatten()
        k = fraction_count(self.poison_fraction, candidates.numel())
        if k == 0:
            return x, y
        pick = candidates[torch.randperm(candidates.numel(), generator=gen)[:k].to(candidates.device)]
        x, y = x.clone(), y.clone()
        x[pick] = self.apply_trigger(x[pick], ctx)
        y[pick] = self.target
        return x, y

    def test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        keep = self.eligible(y)
        xs = x[keep]
        ys = torch.full((len(xs),), self.target, dtype=y.dtype, device=y.device)
        return self.apply_trigger(xs, None), ys


class LabelFlip(TargetedPoison):
    """Targeted label flipping (Tolpegin et al., ESORICS 2020): no trigger, source -> target.

    Args:
        source_class: the class whose samples are relabelled.
        target: the label they get.
        poison_fraction: share of each batch's source-class samples to flip, in [0, 1].
    """

    def __init__(self, source_class: NonNegativeInt = 0, target: NonNegativeInt = 5,
                 poison_fraction: UnitInterval = 1.0) -> None:
        if source_class is None:
            raise ValueError("LabelFlip.source_class must be a non-negative int, got None")
        super().__init__(target=target, source_class=source_class, poison_fraction=poison_fraction)


class EdgeCase(TargetedPoison):
    """Edge-case backdoor (Wang et al., NeurIPS 2020): a sub-population of the inputs, here
    the samples of the (rare) ``classes``, is relabelled to ``target``; no trigger. The test set
    is that sub-population, unchanged, with target labels.

    Args:
        classes: the true labels that form the edge-case sub-population.
        target: the label they get.
        poison_fraction: share of each batch's edge-case samples to relabel, in [0, 1].
    """

    def __init__(self, classes: list[NonNegativeInt], target: NonNegativeInt = 5,
                 poison_fraction: UnitInterval = 1.0) -> None:
        super().__init__(target=target, source_class=None, poison_fraction=poison_fraction)
        if not classes:
            raise ValueError("EdgeCase.classes must be a non-empty list of class indices, got []")
        for c in classes:
            _check_class("EdgeCase", "classes", c)
        if target in classes:
            raise ValueError(f"EdgeCase.classes must not contain EdgeCase.target={target}, got {classes}")
        self.classes = list(classes)

    def _classes(self) -> dict[str, int]:
        return {"target": self.target, "classes": max(self.classes)}

    def eligible(self, y: Tensor) -> Tensor:
        return torch.isin(y, torch.tensor(self.classes, dtype=y.dtype, device=y.device))
