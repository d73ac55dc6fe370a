"""Trigger masks and stamping: pure functions on raw images in [0, 1], shaped ``[N, C, H, W]``.

A trigger is a boolean mask ``[H, W]`` (the pixels it sets, in every channel) plus a value, or a
blend pattern ``[C, H, W]``. Shapes follow the papers and the public reference code:

- BadNets patch (Gu et al., arXiv 1708.06733): a ``size x size`` white square in a corner; the
  FLAIN scripts (arXiv 2408.08655, "CBA") use 5x5 in the bottom-right corner of 28x28 images
  and 4x4 two pixels from the bottom-right corner of 32x32 images.
- DBA (Xie et al., ICLR 2020): four 1-pixel-high stripes laid out in a 2x2 grid in the top-left
  corner; 1x4 stripes every 6 columns and 3 rows on MNIST, 1x6 stripes every 9 columns and 4
  rows on CIFAR-10. Each attacker stamps one stripe; the test trigger is their union.
- Blended (Chen et al., arXiv 1712.05526): ``(1 - alpha) * x + alpha * pattern``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

Corner = Literal["bottom_right", "bottom_left", "top_left", "top_right", "center"]
Pattern = Literal["square", "plus", "checkerboard"]
CORNERS = get_args(Corner)
PATTERNS = get_args(Pattern)


def box_origin(
    image_hw: tuple[int, int], box_hw: tuple[int, int], position: str | tuple[int, int], margin: int
) -> tuple[int, int]:
    """Top-left pixel (row, col) of a ``box_hw`` box placed at ``position`` with ``margin``
    pixels to the nearest image borders; an explicit ``(row, col)`` is returned as given."""
    (h, w), (bh, bw) = image_hw, box_hw
    if not isinstance(position, str):
        return int(position[0]), int(position[1])
    rows = {"top": margin, "bottom": h - bh - margin, "center": (h - bh) // 2}
    cols = {"left": margin, "right": w - bw - margin, "center": (w - bw) // 2}
    if position == "center":
        return rows["center"], cols["center"]
    vertical, horizontal = position.split("_")
    return rows[vertical], cols[horizontal]


def patch_mask(
    image_hw: tuple[int, int], size: int, top: int, left: int, pattern: str = "square"
) -> Tensor:
    """Mask ``[H, W]`` of a ``size x size`` patch at (top, left).

    ``pattern``: "square" (every pixel of the box), "plus" (the middle row and middle column of
    the box) or "checkerboard" (pixels whose in-box row + column is even).
    """
    h, w = image_hw
    if top < 0 or left < 0 or top + size > h or left + size > w:
        raise ValueError(f"a {size}x{size} trigger at ({top}, {left}) does not fit a {h}x{w} image")
    i = torch.arange(size).view(-1, 1)
    j = torch.arange(size).view(1, -1)
    if pattern == "square":
        box = torch.ones(size, size, dtype=torch.bool)
    elif pattern == "plus":
        box = (i == size // 2) | (j == size // 2)
    else:
        box = (i + j) % 2 == 0
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + size, left : left + size] = box
    return mask


def stripe_masks(
    image_hw: tuple[int, int],
    num_parts: int,
    length: int,
    col_step: int,
    row_step: int,
    top: int = 0,
    left: int = 0,
) -> Tensor:
    """Masks ``[num_parts, H, W]`` of DBA's local triggers: 1 x ``length`` stripes, two per
    row of stripes, ``col_step`` columns and ``row_step`` rows apart (part p is in stripe row
    p // 2, stripe column p % 2)."""
    h, w = image_hw
    masks = torch.zeros(num_parts, h, w, dtype=torch.bool)
    for p in range(num_parts):
        r = top + (p // 2) * row_step
        c = left + (p % 2) * col_step
        if r >= h or c + length > w:
            raise ValueError(f"DBA stripe {p} at ({r}, {c}) of length {length} does not fit a {h}x{w} image")
        masks[p, r, c : c + length] = True
    return masks


def stamp(x: Tensor, mask: Tensor, value: float) -> Tensor:
    """Returns a copy of ``x`` ``[N, C, H, W]`` with the ``mask`` ``[H, W]`` pixels of every
    channel set to ``value``; all other pixels are unchanged."""
    mask = mask.to(x.device)
    return torch.where(mask, torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


def blend(x: Tensor, pattern: Tensor, alpha: float) -> Tensor:
    """Returns ``(1 - alpha) * x + alpha * pattern`` for ``x`` ``[N, C, H, W]`` and ``pattern``
    ``[C, H, W]`` (Chen et al. 2017)."""
    pattern = pattern.to(device=x.device, dtype=x.dtype)
    return (1 - alpha) * x + alpha * pattern


def random_pattern(shape: tuple[int, int, int], gen: torch.Generator) -> Tensor:
    """A uniform-noise pattern ``[C, H, W]`` in [0, 1] drawn from ``gen``."""
    return torch.rand(shape, generator=gen)
