"""The attack interface: a malicious client is an honest client with hooks.

The honest trainer (``fedsim.clients.local_train``) calls, for a client that the schedule marks
malicious in this round:

    attack.before_training(model, x, y, normalize, ctx, gen)
                                                   once, before the first step: the model holds
                                                   the global weights, (x, y) is the client's
                                                   whole clean data (raw pixels); adaptive
                                                   attacks measure or optimise against the
                                                   global model here (A3FL, dormancy-aware)
    x, y = attack.poison_batch(x, y, ctx, gen)     every batch, raw pixels in [0, 1], before
                                                   normalisation (data poisoning)
    loss += attack.extra_loss(model, x, y, poisoned, ctx)
                                                   every batch, after the forward pass, when a
                                                   part returns a term (None: nothing added;
                                                   activation camouflage)
    attack.after_step(model, ctx)                  after every optimiser step (PGD projection)
    u = attack.shape_update(u, ctx)                on the final trainable-weight update [d]
                                                   (scaling / model replacement, Neurotoxin)

and trains with ``attack.lr`` / ``attack.epochs`` when they are set. ``Attack`` composes one data
part, any number of model parts, and one schedule. Everything random draws from the generator
passed in, which is seeded from (seed, round, client_id): never from global state or the rank.
``before_training`` gets its own generator (seed, round, client_id, "attack"), so a part that
draws there does not shift the client's shuffling; it runs inside the client's seeded global-RNG
block (dropout of a model it trains is reproducible), and must leave the model's weights and
buffers as it found them (train copies). The defaults are no-ops that draw nothing, so an attack
of strength zero still reproduces the honest run bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

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

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        """Once per malicious client and round, before training (see the module docstring)."""

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

    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        """Once per malicious client and round, before training (see the module docstring)."""

    def extra_loss(self, model: nn.Module, x: Tensor, y: Tensor, poisoned: Tensor,
                   ctx: ClientContext) -> Optional[Tensor]:
        """A scalar added to the batch's cross-entropy, or None. ``x``/``y``: the (poisoned) raw
        batch just forwarded; ``poisoned``: bool ``[B]``, the samples the data part changed."""
        return None

    def after_step(self, model: nn.Module, ctx: ClientContext) -> None:
        pass

    def shape_update(self, update: Tensor, ctx: ClientContext) -> Tensor:
        return update
