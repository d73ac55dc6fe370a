"""Collectives the round loop needs, hiding Fabric's shape rules.

``fabric.all_gather`` needs equal shapes on every rank and adds no world dimension with one
process; ``gather_rows`` pads and strips so the caller sees one ``[rows, cols]`` matrix in every
case. Every function here is a collective: call it on every rank, in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def shard(items: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of the cohort: a pure function of (items, rank, world_size)."""
    return items[rank::world_size]


def gather_rows(fabric, rows: Tensor, max_rows: int) -> Tensor:
    """Pads ``rows`` [k, c] (k <= max_rows) with NaN rows to ``max_rows`` and gathers every
    rank's rows; returns [sum_k, c] with the padding removed (rows whose first column is NaN)."""
    if fabric.world_size == 1:
        return rows
    padded = torch.full((max_rows, rows.shape[1]), float("nan"), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    gathered = fabric.all_gather(padded).reshape(-1, rows.shape[1])
    return gathered[~torch.isnan(gathered[:, 0])]


def broadcast(fabric, tensor: Tensor, src: int = 0) -> Tensor:
    """``src``'s tensor on every rank (same shape and dtype on every rank required)."""
    if fabric.world_size == 1:
        return tensor
    out = tensor.contiguous().clone()
    dist.broadcast(out, src=src)
    return out


def all_reduce_sum(fabric, tensor: Tensor) -> Tensor:
    if fabric.world_size == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
