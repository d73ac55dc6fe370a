"""Trigger backdoors: BadNets patches, Blended noise, DBA's distributed trigger.

Papers:
- BadNets: Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
  Model Supply Chain", arXiv 1708.06733 (2017). Defaults follow the FLAIN scripts' "CBA"
  trigger (arXiv 2408.08655): a white 5x5 square in the bottom-right corner of 28x28 images,
  4x4 two pixels from the corner of larger ones.
- Blended: Chen, Liu, Li, Lu, Song, "Targeted Backdoor Attacks on Deep Learning Systems Using
  Data Poisoning", arXiv 1712.05526 (2017).
- DBA: Xie, Huang, Chen, Li, "DBA: Distributed Backdoor Attacks against Federated Learning",
  ICLR 2020. Client ``c`` stamps local trigger ``c % num_parts`` whenever it attacks, so each
  attacker keeps one part across rounds, as in the paper;
  the ASR is measured with the global trigger (all parts).

Sample selection and relabelling are shared (``fedsim.attacks.poison.TargetedPoison``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from fedsim.attacks.base import AttackContext, ClientContext
from fedsim.attacks.poison import TargetedPoison
from fedsim.attacks.triggers import (
    CORNERS,
    PATTERNS,
    Corner,
    Pattern,
    blend,
    box_origin,
    patch_mask,
    random_pattern,
    stamp,
    stripe_masks,
)
from fedsim.runtime.seeding import generator
from fedsim.schema import NonNegativeInt, PositiveInt, UnitInterval, UnitIntervalOpenLow


def _check_value(owner: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.value must be in [0, 1] (raw pixel scale), got {value}")


def _check_positive(owner: str, name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


class BadNets(TargetedPoison):
    """A fixed patch stamped on raw pixels (Gu et al. 2017).

    Args:
        target: the attacker's target label.
        source_class: one-to-one attack from this class; None means all-to-one.
        poison_fraction: share of the eligible samples of each batch to poison, in [0, 1].
        size: side of the patch box in pixels; None: 5 for images up to 28 pixels high, else 4.
        position: "bottom_right", "bottom_left", "top_left", "top_right", "center", or an
            explicit [row, col] of the box's top-left pixel.
        margin: pixels between the box and the nearest borders; None: 0 for images up to 28
            pixels high, else 2 (both as in the FLAIN scripts).
        value: the pixel value written, in [0, 1].
        pattern: "square" (the whole box), "plus" (its middle row and column) or
            "checkerboard" (every other pixel).
    """

    def __init__(
        self,
        target: NonNegativeInt = 5,
        source_class: Optional[NonNegativeInt] = None,
        poison_fraction: UnitInterval = 0.5,
        size: Optional[PositiveInt] = None,
        position: Union[Corner, tuple[int, int]] = "bottom_right",
        margin: Optional[NonNegativeInt] = None,
        value: UnitInterval = 1.0,
        pattern: Pattern = "square",
    ) -> None:
        super().__init__(target, source_class, poison_fraction)
        _check_positive("BadNets", "size", size)
        if isinstance(position, str) and position not in CORNERS:
            raise ValueError(
                f"BadNets.position must be one of {list(CORNERS)} or [row, col], got {position!r}"
            )
        if not isinstance(position, str) and (len(position) != 2 or min(position) < 0):
            raise ValueError(f"BadNets.position must be [row, col] with row, col >= 0, got {position!r}")
        if margin is not None and margin < 0:
            raise ValueError(f"BadNets.margin must be >= 0, got {margin}")
        if pattern not in PATTERNS:
            raise ValueError(f"BadNets.pattern must be one of {list(PATTERNS)}, got {pattern!r}")
        _check_value("BadNets", value)
        self.size, self.position, self.margin = size, position, margin
        self.value, self.pattern = value, pattern

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        hw = ctx.image_shape[1:]
        small = hw[0] <= 28
        size = self.size if self.size is not None else (5 if small else 4)
        margin = self.margin if self.margin is not None else (0 if small else 2)
        top, left = box_origin(hw, (size, size), self.position, margin)
        try:
            self.mask = patch_mask(hw, size, top, left, self.pattern)  # [H, W] bool
        except ValueError as err:
            raise ValueError(f"BadNets.size / BadNets.position / BadNets.margin: {err}") from None

    def apply_trigger(self, x: Tensor, ctx: Optional[ClientContext]) -> Tensor:
        return stamp(x, self.mask, self.value)


class Blended(TargetedPoison):
    """Blends a fixed pattern into the image: ``(1 - alpha) * x + alpha * pattern``
    (Chen et al. 2017).

    Args:
        target: the attacker's target label.
        source_class: one-to-one attack from this class; None means all-to-one.
        poison_fraction: share of the eligible samples of each batch to poison, in [0, 1].
        alpha: blend ratio in (0, 1].
        pattern: "random" (uniform noise drawn once from the run's seed) or the path of a
            ``.pt`` tensor [C, H, W] in [0, 1].
    """

    def __init__(
        self,
        target: NonNegativeInt = 5,
        source_class: Optional[NonNegativeInt] = None,
        poison_fraction: UnitInterval = 0.5,
        alpha: UnitIntervalOpenLow = 0.2,
        pattern: str = "random",
    ) -> None:
        super().__init__(target, source_class, poison_fraction)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Blended.alpha must be in (0, 1], got {alpha}")
        if pattern != "random" and not str(pattern).endswith(".pt"):
            raise ValueError(f"Blended.pattern must be 'random' or a .pt path, got {pattern!r}")
        self.alpha, self.pattern_source = alpha, pattern

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        if self.pattern_source == "random":
            self.pattern = random_pattern(ctx.image_shape, generator(ctx.seed, "attack", "blended"))
            return
        pattern = torch.load(self.pattern_source, map_location="cpu", weights_only=True).float()
        pattern = pattern.expand(ctx.image_shape) if pattern.dim() == 2 else pattern
        if tuple(pattern.shape) != tuple(ctx.image_shape):
            raise ValueError(f"Blended.pattern has shape {tuple(pattern.shape)}, not {ctx.image_shape}")
        self.pattern = pattern.clamp(0, 1)

    def apply_trigger(self, x: Tensor, ctx: Optional[ClientContext]) -> Tensor:
        return blend(x, self.pattern, self.alpha)


class DBA(TargetedPoison):
    """Distributed backdoor (Xie et al., ICLR 2020): the global trigger is ``num_parts``
    1-pixel stripes in a 2-wide grid; each attacker trains with one stripe.

    Args:
        target: the attacker's target label.
        source_class: one-to-one attack from this class; None means all-to-one.
        poison_fraction: share of the eligible samples of each batch to poison, in [0, 1].
        num_parts: number of local triggers (stripes).
        length: stripe length; None: 4 for images up to 28 pixels high, else 6 (DBA's configs).
        col_step: columns between the starts of the two stripes of a row; None: 6 or 9.
        row_step: rows between stripe rows; None: 3 or 4.
        top: row of the first stripe.
        left: column of the first stripe.
        value: the pixel value written, in [0, 1].
    """

    def __init__(
        self,
        target: NonNegativeInt = 5,
        source_class: Optional[NonNegativeInt] = None,
        poison_fraction: UnitInterval = 0.5,
        num_parts: PositiveInt = 4,
        length: Optional[PositiveInt] = None,
        col_step: Optional[PositiveInt] = None,
        row_step: Optional[PositiveInt] = None,
        top: NonNegativeInt = 0,
        left: NonNegativeInt = 0,
        value: UnitInterval = 1.0,
    ) -> None:
        super().__init__(target, source_class, poison_fraction)
        steps = {"num_parts": num_parts, "length": length, "col_step": col_step, "row_step": row_step}
        for name, v in steps.items():
            _check_positive("DBA", name, v)
        if top < 0 or left < 0:
            raise ValueError(f"DBA.top and DBA.left must be >= 0, got {top}, {left}")
        _check_value("DBA", value)
        self.num_parts, self.length, self.col_step, self.row_step = num_parts, length, col_step, row_step
        self.top, self.left, self.value = top, left, value

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        hw = ctx.image_shape[1:]
        small = hw[0] <= 28
        length = self.length or (4 if small else 6)
        col_step = self.col_step or (6 if small else 9)
        row_step = self.row_step or (3 if small else 4)
        if col_step < length and self.num_parts > 1:
            raise ValueError(f"DBA.col_step must be >= DBA.length={length} (no overlap), got {col_step}")
        try:
            self.parts = stripe_masks(hw, self.num_parts, length, col_step, row_step, self.top, self.left)
        except ValueError as err:
            raise ValueError(f"DBA.num_parts / DBA.length / DBA.top / DBA.left: {err}") from None
        self.mask = self.parts.any(dim=0)  # [H, W]: the global trigger

    def apply_trigger(self, x: Tensor, ctx: Optional[ClientContext]) -> Tensor:
        mask = self.mask if ctx is None else self.parts[ctx.client_id % self.num_parts]
        return stamp(x, mask, self.value)
