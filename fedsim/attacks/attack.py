"""The composite attack the simulation uses: one data poison, model poisons, a schedule.

A malicious client runs the honest trainer with these hooks (see ``fedsim.attacks.base``):
``before_training`` (the data part, then the model parts), ``poison_batch`` (the data part),
``extra_loss`` (the model parts' terms, summed), ``after_step`` and ``shape_update`` (the model
parts, in list order). Parts compose freely, e.g. the constrain-and-scale attack of Bagdasaryan et al.
(AISTATS 2020) is ``Attack(BadNets(), [PGD(eps), Scaling()])``: project, then scale.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from fedsim.attacks.base import AttackContext, ClientContext, DataPoison, ModelPoison
from fedsim.attacks.schedule import Schedule
from fedsim.schema import PositiveFloat, PositiveInt


class Attack:
    """A backdoor attack: what malicious clients do, and who and when they are.

    Args:
        data: the data poison (trigger and relabelling); None for a pure model attack.
        model: model poisons applied in this order (e.g. PGD, then Scaling).
        schedule: which clients attack in which rounds; default ``Schedule()``.
        lr: local learning rate of malicious clients; None: the honest clients' one.
        epochs: local epochs of malicious clients; None: the honest clients' number.
    """

    def __init__(
        self,
        data: Optional[DataPoison] = None,
        model: Optional[list[ModelPoison]] = None,
        schedule: Optional[Schedule] = None,
        lr: Optional[PositiveFloat] = None,
        epochs: Optional[PositiveInt] = None,
    ) -> None:
        if data is not None and not isinstance(data, DataPoison):
            raise ValueError(f"attack.data must be a DataPoison or None, got {type(data).__name__}")
        model = list(model or [])
        for part in model:
            if not isinstance(part, ModelPoison):
                raise ValueError(f"attack.model must hold ModelPoison objects, got {type(part).__name__}")
        if lr is not None and not lr > 0:
            raise ValueError(f"attack.lr must be > 0 or None, got {lr}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"attack.epochs must be >= 1 or None, got {epochs}")
        self.data, self.model = data, model
        self.schedule = schedule if schedule is not None else Schedule()
        self.lr, self.epochs = lr, epochs

    def _parts(self) -> list:
        return ([self.data] if self.data is not None else []) + self.model

    def connect(self, ctx: AttackContext) -> None:
        """Gives every part the run-time facts (image shape, classes, layout, seed)."""
        self.ctx = ctx
        self.schedule.connect(ctx)
        for part in self._parts():
            part.connect(ctx)

    def malicious(self, round: int, cohort: Tensor) -> Tensor:
        """Bool ``[m]``: which members of this round's cohort (sorted ids ``[m]``) attack."""
        return self.schedule.malicious(round, cohort)

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        for part in self._parts():
            part.before_training(model, x, y, normalize, ctx, gen)

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor, poisoned: Tensor,
                   ctx: ClientContext) -> Optional[Tensor]:
        """The sum of the model parts' loss terms; None when no part adds one."""
        total = None
        for part in self.model:
            term = part.extra_loss(model, x, y, poisoned, ctx)
            if term is not None:
                total = term if total is None else total + term
        return total

    def poison_batch(self, x: Tensor, y: Tensor, ctx: ClientContext, gen: torch.Generator):
        if self.data is None:
            return x, y
        return self.data.poison_batch(x, y, ctx, gen)

    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        for part in self.model:
            part.after_step(model, ctx)

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        for part in self.model:
            update = part.shape_update(update, ctx)
        return update

    def test_set(self, x: Tensor, y: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """Triggered test inputs and target labels for the ASR; None without a data part."""
        return None if self.data is None else self.data.test_set(x, y)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state of the parts that have any (A3FL's trigger)."""
        state = {}
        for i, part in enumerate(self._parts()):
            if hasattr(part, "state_dict"):
                state[str(i)] = part.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, part in enumerate(self._parts()):
            if str(i) in state:
                part.load_state_dict(state[str(i)])
