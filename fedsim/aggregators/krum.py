"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. Each update is scored by the sum of its squared distances to its
``n - f - 2`` nearest neighbours; Krum returns the best-scored update, Multi-Krum averages the
``m`` best (sample-weighted). Both need ``n > 2f + 2`` clients per round. The FLAIN reference
scripts ran Krum with ``f = 10``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext
from fedsim.schema import NonNegativeInt, PositiveInt
from fedsim.aggregators.functional import multi_krum_select, weighted_mean


def check_krum_clients(n: int, f: int) -> None:
    """Raises the error a user sees when a round has too few clients for ``f``."""
    if n <= 2 * f + 2:
        raise ValueError(
            f"aggregator.f={f} needs more than 2*f+2={2 * f + 2} clients per round, got {n}; "
            "lower aggregator.f or raise the cohort size"
        )


def _check_f(f: int) -> None:
    if f < 0:
        raise ValueError(f"aggregator.f must be >= 0, got {f}")


def _mask(n: int, idx: Tensor) -> Tensor:
    accepted = torch.zeros(n, dtype=torch.bool, device=idx.device)
    accepted[idx] = True
    return accepted


class Krum(Aggregator):
    """Krum: the one update closest to its ``n - f - 2`` nearest neighbours.

    Args:
        f: the number of Byzantine clients tolerated per round (needs ``n > 2f + 2``).
    """

    def __init__(self, f: NonNegativeInt = 10) -> None:
        _check_f(f)
        self.f = f

    def min_clients(self) -> int:
        return 2 * self.f + 3

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        check_krum_clients(n, self.f)
        idx = multi_krum_select(updates, self.f, 1)
        return AggregationResult(updates[idx[0]].clone(), accepted=_mask(n, idx))


class MultiKrum(Aggregator):
    """Multi-Krum: sample-weighted mean of the ``m`` updates with the best Krum scores.

    Args:
        f: the number of Byzantine clients tolerated per round (needs ``n > 2f + 2``).
        m: how many updates to average; ``None`` means ``n - f``.
    """

    def __init__(self, f: NonNegativeInt = 10, m: Optional[PositiveInt] = None) -> None:
        _check_f(f)
        if m is not None and m < 1:
            raise ValueError(f"aggregator.m must be >= 1 or null (= n - f), got {m}")
        self.f = f
        self.m = m

    def min_clients(self) -> int:
        """Krum's ``n > 2f + 2``, and at least ``m`` clients to average (checked before training)."""
        return max(2 * self.f + 3, self.m or 0)

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n = updates.shape[0]
        check_krum_clients(n, self.f)
        m = n - self.f if self.m is None else self.m
        if m > n:
            raise ValueError(f"aggregator.m={m} exceeds the {n} clients of this round")
        idx = multi_krum_select(updates, self.f, m)
        update = weighted_mean(updates[idx], weights[idx])
        return AggregationResult(update, accepted=_mask(n, idx))
