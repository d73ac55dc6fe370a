"""Collectives the round loop needs, hiding Fabric's shape rules.

Ranks host different numbers of clients, but collectives need equal shapes: ``gather_rows``
pads with NaN rows and strips them again, so the coordinator sees one ``[rows, cols]`` matrix for
any number of processes (and a single process needs no collective at all). Every function here
(but ``shard`` and ``set_stage``) is a collective: call it on every rank, in the same order.

A rank that stops responding (hung, killed, stuck in a kernel) would leave the others waiting in
their next collective for the process group's timeout: 30 minutes for gloo by default.
``use_timeout`` gives the collectives here a process group of their own with a shorter timeout
(``rank_timeout``, 5 minutes by default), and a collective that times out, or finds a peer gone,
raises ``RankTimeout`` naming the stage (``round 3``), so every surviving rank exits with a short
error instead of a gloo traceback. The round loop names the stage with ``set_stage``.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor

_GROUP = None  # the collectives' process group (None: the default group), see use_timeout
_TIMEOUT: Optional[float] = None
_STAGE = "setup"


class RankTimeout(RuntimeError):
    """A collective timed out or lost a peer: some rank stopped responding."""


def use_timeout(fabric, seconds: float) -> None:
    """Collective: the functions here use a process group whose collectives time out after
    ``seconds`` (all ranks; same backend as the default group). No-op for one process."""
    global _GROUP, _TIMEOUT
    if getattr(fabric, "world_size", 1) == 1 or not (dist.is_available() and dist.is_initialized()):
        return
    if not seconds > 0:
        raise ValueError(f"rank_timeout must be > 0 seconds, got {seconds}")
    _GROUP = dist.new_group(timeout=timedelta(seconds=seconds))
    _TIMEOUT = seconds


def release() -> None:
    """Forgets the process group of ``use_timeout`` (before the default group is destroyed)."""
    global _GROUP, _TIMEOUT, _STAGE
    _GROUP, _TIMEOUT, _STAGE = None, None, "setup"


def set_stage(stage: str) -> None:
    """Names what the ranks are doing (``round 3``, ``post-training``) for ``RankTimeout``."""
    global _STAGE
    _STAGE = stage


@contextlib.contextmanager
def _collective(op: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # gloo: "Timed out waiting ...", "Connection closed by peer", ...
        text = str(err).lower()
        if not any(k in text for k in ("timed out", "timeout", "connection", "closed", "reset by peer",
                                       "broken pipe")):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        if "timed out" in text or "timeout" in text:
            limit = f"rank_timeout={_TIMEOUT:g} s" if _TIMEOUT is not None else "the process group's timeout"
            why = f"no reply from the other ranks within {limit}: a rank stopped responding"
        else:
            why = "lost contact with another rank (it exited or crashed)"
        raise RankTimeout(f"{_STAGE}: rank {rank} in {op}: {why}; stopping this rank too") from None


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
        with _collective("gather"):
            dist.gather(padded, dst=dst, group=_GROUP)
        return rows[:0]
    buffers = [torch.empty_like(padded) for _ in range(fabric.world_size)]
    with _collective("gather"):
        dist.gather(padded, gather_list=buffers, dst=dst, group=_GROUP)
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
        with _collective("broadcast"):
            dist.broadcast(failed, src=0, group=_GROUP)
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
    with _collective("broadcast"):
        dist.broadcast(out, src=src, group=_GROUP)
    return out


def all_reduce_sum(fabric, tensor: Tensor) -> Tensor:
    if fabric.world_size == 1:
        return tensor
    out = tensor.clone()
    with _collective("all_reduce"):
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_GROUP)
    return out


def barrier(fabric) -> None:
    """Every rank waits for the others (with ``use_timeout``'s timeout)."""
    if fabric.world_size == 1:
        return
    with _collective("barrier"):
        dist.barrier(group=_GROUP)
