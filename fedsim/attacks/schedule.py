"""Which clients attack, and when.

``Schedule.malicious(round, cohort)`` is a pure function of (seed, round, cohort): every rank
computes the same mask without communication, for any number of processes, after any resume.
Counts round half up: ``fraction_count(0.25, 10) == 3`` (Python's ``round`` would give 2).

Modes (the knobs follow BackFed's ``config/atk_config/base_attack.yaml``: fixed or random
attacker selection, start/end round, single- or multi-shot):

- "per_round": exactly ``fraction_count(mcr, cohort_size)`` members of each round's cohort
  attack, drawn from (seed, "attack", round); the FLAIN scripts' setting.
- "fixed": ``fraction_count(mcr, num_clients)`` attackers drawn once from (seed, "attack",
  "fixed") out of the whole population; they attack whenever they are sampled.
- "redraw": as "fixed", but a fresh attacker set is drawn for every round.

Outside the active rounds nobody attacks. Active rounds are ``rounds`` when given (explicit
single- or multi-shot rounds), otherwise ``start_round, start_round + every, ...`` up to and
including ``end_round``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, get_args

import torch
from torch import Tensor

from fedsim.attacks.base import AttackContext
from fedsim.runtime.seeding import generator
from fedsim.schema import NonNegativeInt, PositiveInt, UnitInterval

Mode = Literal["per_round", "fixed", "redraw"]
MODES = get_args(Mode)


def fraction_count(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up, clamped to [0, n]."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


class Schedule:
    """Selects the malicious clients of a round.

    Args:
        mcr: malicious client ratio in [0, 1] (of the cohort for "per_round", of the whole
            population for "fixed" and "redraw").
        mode: "per_round", "fixed" or "redraw" (see the module docstring).
        start_round: first round in which clients may attack.
        end_round: last round (inclusive) in which clients may attack; None: until the end.
        every: attack every this many rounds from ``start_round``.
        rounds: explicit list of attack rounds; when given, it replaces start/end/every.
    """

    def __init__(
        self,
        mcr: UnitInterval = 0.2,
        mode: Mode = "per_round",
        start_round: NonNegativeInt = 0,
        end_round: Optional[NonNegativeInt] = None,
        every: PositiveInt = 1,
        rounds: Optional[list[NonNegativeInt]] = None,
    ) -> None:
        if not 0.0 <= mcr <= 1.0:
            raise ValueError(f"schedule.mcr must be in [0, 1], got {mcr}")
        if mode not in MODES:
            raise ValueError(f"schedule.mode must be one of {list(MODES)}, got {mode!r}")
        if start_round < 0:
            raise ValueError(f"schedule.start_round must be >= 0, got {start_round}")
        if end_round is not None and end_round < start_round:
            raise ValueError(f"schedule.end_round must be None or >= {start_round}, got {end_round}")
        if every < 1:
            raise ValueError(f"schedule.every must be >= 1, got {every}")
        if rounds is not None and any(r < 0 for r in rounds):
            raise ValueError(f"schedule.rounds must hold rounds >= 0, got {rounds}")
        self.mcr, self.mode, self.every = mcr, mode, every
        self.start_round, self.end_round = start_round, end_round
        self.rounds = None if rounds is None else sorted(set(rounds))

    def connect(self, ctx: AttackContext) -> None:
        self.seed, self.num_clients = ctx.seed, ctx.num_clients
        if ctx.rounds > 0 and not any(self.active(r) for r in range(ctx.rounds)):
            where = f"rounds={self.rounds}" if self.rounds is not None else \
                f"start_round={self.start_round}, end_round={self.end_round}, every={self.every}"
            raise ValueError(f"attack.schedule: no active round inside the run's rounds 0..{ctx.rounds - 1} "
                             f"({where}); the attack would never run")
        outside = [r for r in (self.rounds or []) if r >= ctx.rounds]
        if outside:
            print(f"warning: attack.schedule.rounds {outside} lie outside the run's rounds 0..{ctx.rounds - 1} "
                  f"and never happen", flush=True)

    def active(self, round: int) -> bool:
        """Whether anybody may attack in ``round``."""
        if self.rounds is not None:
            return round in self.rounds
        if round < self.start_round or (self.end_round is not None and round > self.end_round):
            return False
        return (round - self.start_round) % self.every == 0

    def attackers(self, round: int) -> Tensor:
        """The population's attacker ids ``[k]`` for "fixed" (any round) and "redraw" modes."""
        key = "fixed" if self.mode == "fixed" else round
        k = fraction_count(self.mcr, self.num_clients)
        gen = generator(self.seed, "attack", key)
        return torch.randperm(self.num_clients, generator=gen)[:k].sort().values

    def malicious(self, round: int, cohort: Tensor) -> Tensor:
        """Bool mask ``[m]`` over ``cohort`` (int64 ``[m]``, sorted client ids)."""
        m = cohort.numel()
        mask = torch.zeros(m, dtype=torch.bool)
        if self.active(round) and self.mode == "per_round":
            k = fraction_count(self.mcr, m)
            mask[torch.randperm(m, generator=generator(self.seed, "attack", round))[:k]] = True
        elif self.active(round):
            mask = torch.isin(cohort.cpu(), self.attackers(round))
        return mask.to(cohort.device)
