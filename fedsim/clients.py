"""Honest local training, as a pure function of its inputs.

``local_train(model=..., layout=..., global_params=..., x=..., y=..., config=..., seed=...,
round=..., client_id=..., normalize=...)`` (keyword arguments only) gives the same update for
the same (global model, client data, config, seed, round, client id) on any rank and in any
process count: shuffling uses a generator seeded from (seed, round, client_id, "train"), and
dropout draws from the global RNG, which is re-seeded from (seed, round, client_id, "dropout") and
restored afterwards (``seeded_global_rng``) so nothing leaks between clients. Batches are sliced
from in-memory tensors (no DataLoader start-up per client). A malicious client is the same loop
with an ``Attack``'s hooks switched on.

The server trains with the same function: FLTrust's server update (client id -1, the default
streams) and the post-training fine-tuning of ``fedsim.repair`` (its own ``TrainStreams`` keyed by
(seed, defense name), an ``after_step`` hook that keeps pruned channels at zero, and per-epoch
losses summed in float64).

BatchNorm buffers: clients train in train mode, so their running statistics move; they travel in
the update's buffer part (see ``fedsim.params``) and the server averages them by sample count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.params import ParamLayout
from fedsim.runtime.seeding import derive_seed, generator, seeded_global_rng
from fedsim.schema import NonNegativeFloat, PositiveFloat, PositiveInt

Optimizer = Literal["sgd", "adam"]
OPTIMIZERS = get_args(Optimizer)


@dataclass
class ClientConfig:
    """Local training of every client.

    Args:
        optimizer: "sgd" or "adam".
        lr: local learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty.
        epochs: local epochs per round.
        batch_size: local batch size.
    """

    optimizer: Optimizer = "sgd"
    lr: PositiveFloat = 0.01
    momentum: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 64

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"client.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"client.lr must be > 0, got {self.lr}")
        if self.momentum < 0:
            raise ValueError(f"client.momentum must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"client.weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs < 1:
            raise ValueError(f"client.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"client.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ClientResult:
    update: Tensor  # [numel]: trained state - global state (weights and float buffers)
    num_samples: int
    loss: float  # mean training loss over the last epoch
    epoch_losses: list[float] = field(default_factory=list)  # mean training loss of every epoch


@dataclass(frozen=True)
class TrainStreams:
    """The keys of a training run's two random streams (``fedsim.runtime.seeding``): shuffling
    draws from ``generator(*shuffle)``, dropout from the global RNG seeded with
    ``derive_seed(*dropout)``. A client's are ``client_streams(seed, round, client_id)``."""

    shuffle: tuple
    dropout: tuple


def client_streams(seed: int, round: int, client_id: int) -> TrainStreams:
    return TrainStreams((seed, round, client_id, "train"), (seed, round, client_id, "dropout"))


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def local_train(
    *,
    model: nn.Module,
    layout: ParamLayout,
    global_params: Tensor,
    x: Tensor,
    y: Tensor,
    config: ClientConfig,
    seed: int,
    round: int,
    client_id: int,
    normalize: Callable[[Tensor], Tensor],
    attack=None,
    attack_ctx=None,
    streams: Optional[TrainStreams] = None,
    after_step: Optional[Callable[[nn.Module], None]] = None,
    loss_dtype: torch.dtype = torch.float32,
    loss_fn: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None,
) -> ClientResult:
    """Trains ``model`` from ``global_params`` on (x, y) and returns the update.

    ``x`` holds raw pixels in [0, 1]; poisoning happens on raw pixels, then ``normalize``.
    ``attack`` (a ``fedsim.attacks.Attack``) and ``attack_ctx`` (its ``ClientContext``) are given
    only for a client that attacks in this round; its hooks run in the order ``before_training``,
    then per batch ``poison_batch``, ``extra_loss``, ``after_step``, then ``shape_update``
    (``fedsim.attacks.base``). Without an attack none of them is reached.

    ``config.epochs`` epochs (an attack's own ``epochs`` replaces it). ``streams`` replaces the
    client's random streams (server-side training); ``after_step(model)`` runs after every
    optimizer step; ``loss_dtype`` is the dtype in which the batch losses are summed (float32 for
    clients; the server's fine-tuning reports float64 sums). ``loss_fn(logits, inputs, y)``
    replaces the cross-entropy (server-side training only, e.g. distillation; ``inputs`` are the
    normalized batch) and is then the reported loss. ``model`` ends in train mode and holds the
    trained parameters.
    """
    layout.load(model, global_params)
    model.train()
    lr = attack.lr if attack is not None and attack.lr is not None else config.lr
    epochs = attack.epochs if attack is not None and attack.epochs is not None else config.epochs
    opt = make_optimizer(model.parameters(), config.optimizer, lr, config.momentum, config.weight_decay)
    streams = streams or client_streams(seed, round, client_id)
    gen = generator(*streams.shuffle)
    n, bs = len(y), config.batch_size
    epoch_losses: list[float] = []
    # the global RNG is restored afterwards (the GPU's too when training on one)
    with seeded_global_rng(derive_seed(*streams.dropout), x.device):
        if attack is not None:  # adaptive attacks look at the global model and the clean data
            attack.before_training(model, x, y, normalize, attack_ctx, generator(seed, round, client_id, "attack"))
            model.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(x.device)
            # float64 sums live on the CPU (MPS has no float64); float32 ones stay on the device
            total = torch.zeros((), dtype=loss_dtype, device="cpu" if loss_dtype == torch.float64 else x.device)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                xb, yb = x[idx], y[idx]
                if attack is not None:
                    clean_x, clean_y = xb, yb
                    xb, yb = attack.poison_batch(xb, yb, attack_ctx, gen)
                inputs = normalize(xb)
                logits = model(inputs)
                loss = ce = F.cross_entropy(logits, yb) if loss_fn is None else loss_fn(logits, inputs, yb)
                if attack is not None:
                    extra = attack.extra_loss(model, xb, yb, _changed(clean_x, clean_y, xb, yb), attack_ctx)
                    if extra is not None:  # the reported loss stays the cross-entropy
                        loss = ce + extra
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if attack is not None:
                    attack.after_step(model, attack_ctx)
                if after_step is not None:
                    after_step(model)
                total += ce.detach().to(total.device, loss_dtype) * len(idx)
            epoch_losses.append(float(total) / max(n, 1))
    update = layout.flatten(model) - global_params
    if attack is not None:
        w = layout.num_weights
        update[:w] = attack.shape_update(update[:w], attack_ctx)
    return ClientResult(update, n, epoch_losses[-1] if epoch_losses else float("nan"), epoch_losses)


def _changed(x0: Tensor, y0: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Bool ``[B]``: the samples a data poison changed (label or any pixel)."""
    if x is x0 and y is y0:
        return torch.zeros(len(y), dtype=torch.bool, device=y.device)
    return (y != y0) | (x != x0).flatten(1).any(1)
