"""Fine-Pruning: prune the channels that clean data leaves dormant, then fine-tune.

Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018 (arXiv 1805.12185). A backdoor tends to live in neurons that clean inputs do
not activate. The defender ranks the output channels of a late layer (the paper: the last conv
layer) by their mean activation on clean data and prunes them from the least active upwards while
clean accuracy holds, then fine-tunes on the clean data.

Here the clean data is the server's auxiliary set. Pruning zeroes the channel's filter and bias
(and the affine of a BatchNorm right after it, see ``fedsim.repair.channels``); the channels are
taken one ``step`` at a time until aux accuracy has dropped by more than ``tolerance`` below that
of theta_T or ``max_prune_ratio`` of the channels is reached, and the last acceptable count is
kept. Fine-tuning (SGD, momentum 0.9) re-zeroes the pruned channels after every step so that they
stay pruned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fedsim.posttrain import PostTrainContext, PostTrainingDefense, SetupContext
from fedsim.repair.channels import accuracy, find_layer, mean_activation, rank_channels, zero_channels
from fedsim.repair.finetune import check_training, scratch_model, train_on_aux
from fedsim.schema import NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval


class FinePruning(PostTrainingDefense):
    """Prune the least active channels of one layer on the auxiliary set, then fine-tune.

    Args:
        layer: module name of an ``nn.Conv2d`` or ``nn.Linear`` (e.g. "conv2" for MnistCNN);
            None: the last ``nn.Conv2d`` of the model.
        tolerance: largest acceptable drop in aux accuracy (absolute, in [0, 1]) caused by pruning.
        max_prune_ratio: largest share of the layer's channels that may be pruned, in [0, 1].
        step: channels pruned between two accuracy checks (1 is the paper's procedure; larger is
            faster on wide layers).
        finetune_epochs: epochs of fine-tuning on the aux set after pruning (0: prune only).
        finetune_lr: SGD learning rate of the fine-tuning.
        batch_size: fine-tuning mini-batch size.
        apply: make the repaired model the simulation's final global model.
        name: the summary key, file prefix and random-stream key.
    """

    name = "fine_pruning"

    def __init__(self, layer: str | None = None, tolerance: UnitInterval = 0.05, max_prune_ratio: UnitInterval = 0.8,
                 step: PositiveInt = 1, finetune_epochs: NonNegativeInt = 1, finetune_lr: PositiveFloat = 0.01,
                 batch_size: PositiveInt = 64, apply: bool = True, name: str = "fine_pruning") -> None:
        super().__init__(apply=apply, name=name)
        if not 0 <= tolerance <= 1:
            raise ValueError(f"fine_pruning.tolerance must be in [0, 1], got {tolerance!r}")
        if not 0 <= max_prune_ratio <= 1:
            raise ValueError(f"fine_pruning.max_prune_ratio must be in [0, 1], got {max_prune_ratio!r}")
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"fine_pruning.step must be an int >= 1, got {step!r}")
        check_training(("fine_pruning.finetune_epochs", finetune_epochs), ("fine_pruning.finetune_lr", finetune_lr),
                       ("fine_pruning.batch_size", batch_size))
        self.layer, self.tolerance, self.max_prune_ratio, self.step = layer, tolerance, max_prune_ratio, step
        self.finetune_epochs, self.finetune_lr, self.batch_size = finetune_epochs, finetune_lr, batch_size

    def validate(self, setup: SetupContext) -> None:
        """Raise ValueError (listing the available layers) if ``layer`` is not in the model."""
        find_layer(setup.model, self.layer, "fine_pruning.layer")

    def _prune_count(self, model: nn.Module, target, order: Tensor, ctx: PostTrainContext) -> tuple[int, float]:
        """Prune ``order`` one step at a time; return (last acceptable count, its aux accuracy)."""
        x, y, norm, dev = ctx.aux_x, ctx.aux_y, ctx.normalize, ctx.device
        base = accuracy(model, x, y, norm, dev)
        limit = math.floor(self.max_prune_ratio * len(order) + 1e-9)
        counts = [*range(self.step, limit, self.step), limit] if limit > 0 else []
        kept, kept_acc, done = 0, base, 0
        for count in counts:  # step, 2 * step, ..., limit
            zero_channels(target, order[done:count])
            done = count
            acc = accuracy(model, x, y, norm, dev)
            if base - acc > self.tolerance + 1e-9:  # 1e-9: accuracies are float ratios
                break
            kept, kept_acc = count, acc
        return kept, kept_acc

    def repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        with scratch_model(ctx, ctx.theta_t) as model:
            target = find_layer(model, self.layer, "fine_pruning.layer")
            model.eval()
            activation = mean_activation(model, target, ctx.aux_x, ctx.normalize, ctx.device)
            order = rank_channels(activation)
            count, pruned_acc = self._prune_count(model, target, order, ctx)
            pruned = torch.sort(order[:count]).values
            ctx.layout.load(model, ctx.theta_t)  # undo the trial pruning
            zero_channels(target, pruned)
            train_on_aux(model, ctx, name=self.name, epochs=self.finetune_epochs,
                         lr=self.finetune_lr, batch_size=self.batch_size,
                         after_step=lambda: zero_channels(target, pruned))
            repaired = ctx.layout.flatten(model)
        info = {"layer": target.name, "pruned_channels": count, "total_channels": target.num_channels,
                "pruned_indices": pruned.tolist(), "aux_acc_after_prune": pruned_acc,
                "finetune_epochs": self.finetune_epochs}
        return repaired, info
