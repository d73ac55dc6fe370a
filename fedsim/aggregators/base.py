"""The aggregation interface.

An aggregation rule sees the round's client updates as one matrix and returns one update:

    updates: Tensor[n, d]   row i = client i's trainable-weight update (theta_i - theta_global)
    weights: Tensor[n]      client i's number of training samples (float)
    ->  AggregationResult.update: Tensor[d], applied as theta_global + update

Rows arrive in cohort order (sorted client ids), identical for any number of processes.
Non-finite rows are removed by the simulation before any rule runs. Facts known only at run time
(the layout, the device, the server's auxiliary data, a model to train on it) arrive once through
``connect(ServerContext)``; each round's facts through the frozen ``RoundContext``; state that
must survive a resume goes through ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from fedsim.params import ParamLayout


@dataclass(frozen=True)
class ServerContext:
    """Run-time facts given to ``Aggregator.connect`` once, before the first round.

    A rule that trains on the server's own data (FLTrust's root set) finds here the auxiliary
    set, the normalisation, the clients' training settings and ``make_model``, which returns a
    fresh copy of the network (train it freely; the simulation's own model is never handed out).
    """

    layout: ParamLayout
    device: torch.device
    num_clients: int
    seed: int
    aux_per_class: int = 0  # samples per class of the server's auxiliary set (FLTrust's root data)
    # forward(weights [num_weights], x [B, *input_shape] raw pixels in [0, 1]) -> logits [B, num_classes]:
    # the model with these trainable weights (and the global buffers), in eval mode, no grad (DeepSight)
    forward: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    input_shape: tuple[int, ...] = ()  # (C, H, W) of the data
    num_classes: int = 0
    aux_x: Optional[Tensor] = None  # the auxiliary set: raw pixels [N, C, H, W] on `device`
    aux_y: Optional[Tensor] = None  # its labels [N]
    normalize: Optional[Callable[[Tensor], Tensor]] = None  # raw pixels -> model input
    client: Any = None  # the clients' fedsim.clients.ClientConfig
    make_model: Optional[Callable[[], Any]] = None  # -> a fresh copy of the network on `device`


@dataclass(frozen=True)
class RoundContext:
    """Read-only facts about the round being aggregated."""

    round: int
    global_weights: Tensor  # [d] current global trainable weights
    client_ids: Tensor  # [n] int64, the clients whose rows are in `updates`
    generator: torch.Generator  # seeded from (seed, round, "aggregate"); use for any noise
    global_params: Optional[Tensor] = None  # [numel] the whole global vector (weights | float buffers)
    # Ground truth from the attack schedule ([n] bool, True = malicious); for metrics only,
    # a rule must never use it to decide.
    malicious: Optional[Tensor] = None


@dataclass
class AggregationResult:
    update: Tensor  # [d]
    accepted: Optional[Tensor] = None  # [n] bool: the clients the rule kept (detection rules)
    metrics: dict[str, float] = field(default_factory=dict)


class Aggregator:
    """Base class: subclasses implement ``aggregate``."""

    def connect(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def min_clients(self) -> int:
        """Fewest clients a round needs for this rule's hyperparameters (checked before training
        against the cohort size; rounds that lose clients to non-finite updates may still fail)."""
        return 1

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
