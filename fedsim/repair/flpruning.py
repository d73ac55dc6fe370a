"""Federated pruning by majority vote of dormant channels.

Wu, Yang, Zhu, Mitra, "Mitigating Backdoor Attacks in Federated Learning", arXiv 2011.01767. After
training, each client ranks the channels of the last conv layer by their mean activation on its
own (clean) data and reports the least active ones; the server prunes the channels that a
majority of clients reported as dormant.

What differs here, honestly stated:
- Our simulator cannot query clients after training, so the voters are ``num_voters`` disjoint,
  random shards of the server's auxiliary set (a stand-in for the clients' local data; the
  shards are i.i.d., so the vote is less diverse than with non-i.i.d. clients).
- Each voter reports its ``floor(prune_ratio * C)`` least active channels; a channel is pruned
  when at least half of the voters report it (``2 * votes >= num_voters``).
- The paper's second step, adjusting extreme weights of the pruned model, is out of scope, and
  so is choosing the pruning rate on validation data: ``prune_ratio`` is fixed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fedsim.posttrain import PostTrainContext, PostTrainingDefense, SetupContext
from fedsim.repair.channels import find_layer, mean_activation, zero_channels
from fedsim.repair.finetune import scratch_model
from fedsim.runtime.seeding import generator
from fedsim.schema import PositiveInt, UnitInterval


def dormant_sets(activation: Tensor, k: int) -> Tensor:
    """``activation [V, C]`` -> bool ``[V, C]``: each voter's ``k`` least active channels
    (ties: lower index first)."""
    order = torch.sort(activation, dim=1, stable=True).indices[:, :k]
    return torch.zeros_like(activation, dtype=torch.bool).scatter_(1, order, True)


def majority_vote(dormant: Tensor) -> tuple[Tensor, Tensor]:
    """bool ``[V, C]`` -> (votes per channel ``[C]``, pruned mask ``[C]``: votes >= V / 2)."""
    votes = dormant.sum(dim=0)
    return votes, 2 * votes >= dormant.shape[0]


class FLPruning(PostTrainingDefense):
    """Prune the channels that most aux-set shards find dormant (federated-pruning stand-in).

    Args:
        layer: module name of an ``nn.Conv2d`` or ``nn.Linear``; None: the last ``nn.Conv2d``.
        num_voters: number of disjoint aux shards that vote (stand-ins for clients).
        prune_ratio: share of the channels each voter reports as dormant, in [0, 1].
        apply: make the repaired model the simulation's final global model.
        name: the summary key, file prefix and random-stream key.
    """

    name = "fl_pruning"

    def __init__(self, layer: str | None = None, num_voters: PositiveInt = 10, prune_ratio: UnitInterval = 0.3,
                 apply: bool = True, name: str = "fl_pruning") -> None:
        super().__init__(apply=apply, name=name)
        if not isinstance(num_voters, int) or num_voters < 1:
            raise ValueError(f"fl_pruning.num_voters must be an int >= 1, got {num_voters!r}")
        if not 0 <= prune_ratio <= 1:
            raise ValueError(f"fl_pruning.prune_ratio must be in [0, 1], got {prune_ratio!r}")
        self.layer, self.num_voters, self.prune_ratio = layer, num_voters, prune_ratio

    def validate(self, setup: SetupContext) -> None:
        """Before any data is loaded: ``layer`` must be in the model (the error lists the
        available layers) and every voter needs at least one auxiliary sample."""
        find_layer(setup.model, self.layer, "fl_pruning.layer")
        self._check_voters(setup.aux_size)

    def _check_voters(self, aux_size: int) -> None:
        if self.num_voters > aux_size:
            raise ValueError(f"fl_pruning.num_voters must be in [1, {aux_size}] (one auxiliary sample per voter at "
                             f"least: the auxiliary set holds {aux_size}), got {self.num_voters}")

    def _shard_activations(self, model: nn.Module, target, ctx: PostTrainContext) -> Tensor:
        """Mean activation of every channel on each voter's shard, ``[V, C]``."""
        x = ctx.aux_x
        self._check_voters(len(x))
        perm = torch.randperm(len(x), generator=generator(ctx.seed, self.name))
        return torch.stack([
            mean_activation(model, target, x[shard], ctx.normalize, ctx.device)
            for shard in perm.tensor_split(self.num_voters)
        ])

    def repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        with scratch_model(ctx, ctx.theta_t) as model:
            target = find_layer(model, self.layer, "fl_pruning.layer")
            model.eval()
            activation = self._shard_activations(model, target, ctx)
            k = math.floor(self.prune_ratio * target.num_channels + 1e-9)
            votes, mask = majority_vote(dormant_sets(activation, k))
            pruned = mask.nonzero().flatten()
            zero_channels(target, pruned)
            repaired = ctx.layout.flatten(model)
        info = {"layer": target.name, "pruned_channels": int(mask.sum()),
                "total_channels": target.num_channels, "pruned_indices": pruned.tolist(),
                "votes": votes.tolist(), "num_voters": self.num_voters}
        return repaired, info
