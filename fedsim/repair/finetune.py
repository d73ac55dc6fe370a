"""Server-side fine-tuning of the final global model on the auxiliary clean set.

The common post-training baseline: backdoor behaviour that the clean data does not reinforce
fades when the model keeps training on clean data (used as a baseline e.g. by Fang & Chen, "On the
Vulnerability of Backdoor Defenses for Federated Learning", AAAI 2023; and as the second stage of
Fine-Pruning, Liu et al., RAID 2018). ``train_on_aux`` is shared with ``FinePruning``.

Deterministic for a seed: the shuffling comes from
``fedsim.runtime.seeding.generator(seed, name)``, and dropout draws from the global RNG seeded
from the same key and restored afterwards (``fedsim.runtime.seeding.seeded_global_rng``), so the
caller's RNG is untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.clients import OPTIMIZERS, Optimizer, make_optimizer
from fedsim.posttrain import PostTrainingDefense
from fedsim.runtime.seeding import derive_seed, generator, seeded_global_rng
from fedsim.schema import NonNegativeInt, PositiveFloat, PositiveInt, UnitIntervalOpenHigh


@contextmanager
def scratch_model(simulation, params: Tensor) -> Iterator[nn.Module]:
    """``simulation.model`` loaded with ``params``; its parameters and train/eval mode are put
    back afterwards, whatever happens inside."""
    model, layout = simulation.model, simulation.layout
    saved, was_training = layout.flatten(model), model.training
    layout.load(model, params.to(saved.device))
    try:
        yield model
    finally:
        layout.load(model, saved)
        model.train(was_training)


def train_on_aux(model: nn.Module, simulation, *, name: str, epochs: int, lr: float,
                 momentum: float = 0.9, batch_size: int = 64, optimizer: str = "sgd",
                 after_step: Callable[[], None] | None = None) -> list[float]:
    """Train ``model`` in place on ``simulation.data.aux`` with cross-entropy; returns the mean
    loss of each epoch. ``after_step`` runs after every optimizer step (e.g. to re-zero pruned
    channels). The model is left in train mode; the caller restores it."""
    x, y, device = simulation.data.aux.x, simulation.data.aux.y, simulation.device
    gen = generator(simulation.config.seed, name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, momentum, 0.0)
    losses: list[float] = []
    model.train()
    with seeded_global_rng(derive_seed(simulation.config.seed, name, "dropout"), device):
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                loss = F.cross_entropy(model(simulation.normalize(xb)), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / max(len(x), 1))
    return losses


class FineTuning(PostTrainingDefense):
    """Fine-tune theta_T on the server's auxiliary clean set.

    Args:
        epochs: passes over the auxiliary set.
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        batch_size: mini-batch size.
        optimizer: "sgd" or "adam".
        apply: make the fine-tuned model the simulation's final global model.
    """

    name = "fine_tuning"

    def __init__(self, epochs: NonNegativeInt = 5, lr: PositiveFloat = 0.01, momentum: UnitIntervalOpenHigh = 0.9,
                 batch_size: PositiveInt = 64, optimizer: Optimizer = "sgd", apply: bool = True) -> None:
        super().__init__(apply=apply)
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"fine_tuning.epochs must be an int >= 0, got {epochs!r}")
        if not lr > 0:
            raise ValueError(f"fine_tuning.lr must be > 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"fine_tuning.momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"fine_tuning.batch_size must be an int >= 1, got {batch_size!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"fine_tuning.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.epochs, self.lr, self.momentum = epochs, lr, momentum
        self.batch_size, self.optimizer = batch_size, optimizer

    def validate(self, model: nn.Module) -> None:
        """Nothing to check: fine-tuning works on any model."""

    def repair(self, simulation) -> tuple[Tensor, dict[str, Any]]:
        with scratch_model(simulation, simulation.trained_params) as model:
            losses = train_on_aux(
                model, simulation, name=self.name, epochs=self.epochs, lr=self.lr,
                momentum=self.momentum, batch_size=self.batch_size, optimizer=self.optimizer)
            repaired = simulation.layout.flatten(model)
        info = {"epochs": self.epochs, "optimizer": self.optimizer, "loss_per_epoch": losses,
                "train_loss": losses[-1] if losses else float("nan")}
        return repaired, info
