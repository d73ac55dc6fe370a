"""Callbacks: the hooks the simulation calls on every rank, through ``fabric.call``.

Hooks (all optional, each receives the Fabric object and the simulation):

    on_train_start(fabric, simulation)           after setup/resume, before the first round
    on_round_end(fabric, simulation, round, metrics)   after aggregation + evaluation
    on_train_end(fabric, simulation)             after the last round; post-training defenses
                                                 (FLAIN, fine-pruning, ...) live here

A post-training defense subclasses ``fedsim.posttrain.PostTrainingDefense`` instead: its
``on_train_end`` is written once in the base class, and the defense itself implements only
``repair(ctx)`` on the frozen ``PostTrainContext`` (and optionally ``validate(setup)``), never
touching the simulation.

Rule: every hook runs on every rank (so it may call collectives); side effects such as logging
or writing files happen on rank 0 only (``fabric.is_global_zero``). In ``on_round_end`` the
evaluation metrics (acc, asr, ...) are the same on every rank, but the aggregator's metrics
(train_loss, detect/*, rule-specific keys) exist on rank 0 only: never branch on them in a way
that changes which collectives a rank calls.
"""

from __future__ import annotations


class Callback:
    """Base class for simulation callbacks; override the hooks you need."""

    def on_train_start(self, fabric, simulation) -> None:
        pass

    def on_round_end(self, fabric, simulation, round: int, metrics: dict) -> None:
        pass

    def on_train_end(self, fabric, simulation) -> None:
        pass
