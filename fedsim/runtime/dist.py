"""Collectives the round loop needs, hiding Fabric's shape rules.

Ranks host different numbers of clients, but collectives need equal shapes: ``gather_rows``
pads with NaN rows and strips them again, so the coordinator sees one ``[rows, cols]`` matrix for
any number of processes (and a single process needs no collective at all). Every function here is a collective: call it on every rank, in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def shard(items: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of the cohort: a pure function of (items, rank, world_size)."""
    return items[rank::world_size]


def gather_rows(fabric, rows: Tensor, max_rows: int, dst: int = 0) -> Tensor:
    """Pads ``rows`` [k, c] (k <= max_rows) with NaN rows to ``max_rows`` and gathers every
    rank's rows on rank ``dst`` only (the others would only hold memory they never use); returns
    [sum_k, c] with the padding removed (rows whose first column is NaN) on ``dst``, and an empty
    [0, c] tensor elsewhere."""
    if fabric.world_size == 1:
        return rows
    padded = torch.full((max_rows, rows.shape[1]), float("nan"), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    if fabric.global_rank != dst:
        dist.gather(padded, dst=dst)
        return rows[:0]
    buffers = [torch.empty_like(padded) for _ in range(fabric.world_size)]
    dist.gather(padded, gather_list=buffers, dst=dst)
    gathered = torch.cat(buffers)
    return gathered[~torch.isnan(gathered[:, 0])]


def run_on_zero(fabric, fn, placeholder):
    """Runs ``fn`` on rank 0 only; if it raises, every rank raises (instead of the others
    waiting forever in the next collective). Returns ``fn()`` on rank 0, ``placeholder`` elsewhere."""
    error, result = None, placeholder
    if fabric.is_global_zero:
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every rank knows
            error = err
    failed = torch.tensor([float(error is not None)])
    if getattr(fabric, "world_size", 1) > 1:
        failed = failed.to(fabric.device)
        dist.broadcast(failed, src=0)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError("rank 0 failed (see its error above); stopping this rank too")
    return result


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
