"""The attack interface: a malicious client is an honest client with hooks.

The honest trainer (``fedsim.clients.local_train``) calls, for a client that the schedule marks
malicious in this round:

    x, y = attack.poison_batch(x, y, ctx, gen)     every batch, raw pixels in [0, 1], before
                                                   normalisation (data poisoning)
    attack.after_step(model, ctx)                  after every optimiser step (PGD projection)
    u = attack.shape_update(u, ctx)                on the final trainable-weight update [d]
                                                   (scaling / model replacement, Neurotoxin)

and trains with ``attack.lr`` / ``attack.epochs`` when they are set. ``Attack`` composes one data
part, any number of model parts, and one schedule. Everything random draws from the generator
passed in, which is seeded from (seed, round, client_id): never from global state or the rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from fedsim.params import ParamLayout


@dataclass(frozen=True)
class AttackContext:
    """Run-time facts given to ``connect`` once, before the first round."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    num_clients: int
    cohort_size: int
    rounds: int
    seed: int
    layout: ParamLayout
    server_lr: float = 1.0


@dataclass(frozen=True)
class ClientContext:
    """What a malicious client knows while it trains in one round."""

    round: int
    client_id: int
    global_weights: Tensor  # [d] trainable weights of the global model it starts from
    prev_global_update: Optional[Tensor]  # [d] global_r - global_{r-1}; None in the first round
    num_samples: int
    cohort_size: int
    attacker_rank: int  # position of this client among this round's attackers (0..m-1)
    num_attackers: int  # attackers in this round's cohort


class DataPoison:
    """Poisons training batches and builds the triggered test set for the ASR."""

    def connect(self, ctx: AttackContext) -> None:
        self.actx = ctx

    def poison_batch(self, x: Tensor, y: Tensor, ctx: ClientContext, gen: torch.Generator):
        return x, y

    def test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """From clean test data, returns (triggered inputs, attacker's target labels), keeping
        only the samples the ASR counts (true label != target; one-to-one: source class only)."""
        raise NotImplementedError


class ModelPoison:
    """Shapes the malicious client's training or its update."""

    def connect(self, ctx: AttackContext) -> None:
        self.actx = ctx

    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        pass

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        return update
