"""Post-training defenses: repair the final global model on the server's auxiliary data.

A post-training defense (FLAIN, fine-pruning, server fine-tuning, ...) subclasses
``PostTrainingDefense`` and implements one method, ``repair(ctx) -> (vector, info)``, where
``ctx`` is a frozen ``PostTrainContext``: everything a defense may read (theta_0, theta_T, the
parameter layout, the auxiliary set, ``normalize``, the device, the seed, a scratch model, a
local ``evaluate``, the logger, the attack's triggered auxiliary inputs). A defense never sees
the ``Simulation``. Optionally it overrides ``validate(setup)`` to refuse a configuration before
any data is loaded or any round runs (``SetupContext``: the model, the classes, the auxiliary
set's size).

The shared ``on_train_end`` then does what every such defense must do the same way, so that
they sit side by side in one results table:

1. evaluate the trained model theta_T (clean ACC, ASR, aux accuracy) - "before";
2. call ``repair`` on rank 0 (timed), broadcast the repaired vector to every rank;
3. evaluate it - "after"; write ``<name>_repaired.pt`` (atomically) and a ``summary[name]`` block
   with stable keys; log the before/after figures.

Every defense starts from the same theta_T (``ctx.theta_t``), never from another defense's
output, unless ``apply=True`` makes its result the simulation's final model. Every defense takes
``name`` (the summary key, file prefix and random-stream key), so two configurations of one
defense run side by side; two defenses with the same name are refused before training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from fedsim.callbacks import Callback
from fedsim.params import ParamLayout
from fedsim.runtime.dist import run_on_zero


@dataclass(frozen=True)
class SetupContext:
    """What is known about a run before any data is loaded: given to ``validate``.

    Attributes:
        model: the configured network (read it, e.g. to resolve layer names; do not train it).
        layout: its flat parameter layout.
        num_classes: the dataset's number of classes.
        aux_per_class: samples per class in the server's auxiliary set (``fed.aux_per_class``).
        rounds: ``fed.rounds``.
        seed: the run's seed.
    """

    model: nn.Module
    layout: ParamLayout
    num_classes: int
    aux_per_class: int
    rounds: int = 0
    seed: int = 0

    @property
    def aux_size(self) -> int:
        """Samples in the auxiliary set (exactly ``aux_per_class`` of every class, or the run
        stops before training)."""
        return self.aux_per_class * self.num_classes

    @classmethod
    def of(cls, model: nn.Module, num_classes: int, aux_per_class: int, rounds: int = 0,
           seed: int = 0) -> SetupContext:
        return cls(model, ParamLayout(model), num_classes, aux_per_class, rounds, seed)


@dataclass(frozen=True)
class PostTrainContext:
    """What a post-training defense may read, built once by the simulation after the last round
    (rank 0 calls ``repair`` with it). Tensors are on ``device``; treat them as read-only.

    Attributes:
        theta0: the initial global model ``[numel]`` (saved at the start, never re-created).
        theta_t: the trained global model ``[numel]`` every defense starts from.
        layout: the flat parameter layout (``fedsim.params.ParamLayout``): views, load, flatten.
        aux_x: the server's auxiliary inputs, raw pixels in [0, 1] ``[N, C, H, W]``.
        aux_y: their labels ``[N]``.
        normalize: raw pixels -> model input.
        device: where the tensors and the scratch model live.
        seed: the run's seed (derive random streams from it and the defense's name).
        rounds: rounds trained.
        train_seconds: the training rounds' summed wall time.
        run_dir: the run directory (rank 0 writes figures there).
        logger: the run's ``fedsim.loggers.RunLogger`` (histograms, tables, images, scalars).
        model: a scratch copy of the network, shared by the defenses in turn: load weights into
            it freely (``layout.load``); it is not the model the simulation evaluates.
        evaluate: ``evaluate(vector) -> {"acc", "loss", "per_class_acc", "aux_acc"[, "asr"]}``
            computed on this rank alone (not a collective; the same numbers as the simulation's).
        triggered_aux_x: the attack's triggered versions of the auxiliary inputs its ASR counts
            (raw pixels), or None without a trigger.
    """

    theta0: Tensor
    theta_t: Tensor
    layout: ParamLayout
    aux_x: Tensor
    aux_y: Tensor
    normalize: Callable[[Tensor], Tensor]
    device: torch.device
    seed: int
    rounds: int
    train_seconds: float
    run_dir: Path
    logger: Any
    model: nn.Module
    evaluate: Callable[[Tensor], dict[str, Any]]
    triggered_aux_x: Optional[Tensor] = None


class PostTrainingDefense(Callback):
    """Base class: subclasses implement ``repair`` (and optionally ``validate``).

    Args:
        apply: make the repaired model the simulation's final global model.
        name: the summary key / file prefix; None = the class's default name.
    """

    name = "defense"

    def __init__(self, apply: bool = True, name: Optional[str] = None) -> None:
        self.apply = apply
        if name is not None:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"callbacks.name must be a Python identifier (letters, digits, _), got {name!r}")
            self.name = name

    def validate(self, setup: SetupContext) -> None:
        """Called for every post-training defense before any data is loaded or any round runs;
        raise ``ValueError`` (naming the field, the allowed values and the value given) for a
        configuration that cannot work with this run. Default: nothing to check."""

    def repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        """Rank 0 only. Returns (repaired full parameter vector [numel], info dict of floats/ints/
        lists that goes into ``summary[name]``)."""
        raise NotImplementedError

    def _timed_repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        start = time.perf_counter()
        repaired, info = self.repair(ctx)
        info["seconds"] = time.perf_counter() - start
        if ctx.train_seconds > 0:  # cost relative to the training rounds
            info["seconds_vs_training"] = info["seconds"] / ctx.train_seconds
        return repaired, info

    def on_train_end(self, fabric, simulation) -> None:
        # The simulation's services (collective evaluation, broadcast, final model, files) are
        # used here, in the base class, only; ``repair`` sees the frozen context.
        ctx = simulation.posttrain_context()
        # theta_T was just evaluated by the simulation (on every rank, so no collective is skipped
        # on one rank only); reuse it instead of a second pass over the test and aux sets
        before = simulation.summary.get("trained") or simulation.evaluate(ctx.theta_t)
        repaired, info = run_on_zero(fabric, lambda: self._timed_repair(ctx), (torch.empty_like(ctx.theta_t), {}))
        repaired = simulation.broadcast(repaired)
        after = simulation.evaluate(repaired)
        block = {**info}
        for key in ("acc", "asr", "aux_acc"):
            if key in before:
                block[f"{key}_before"] = before[key]
                block[f"{key}_after"] = after[key]
        simulation.summary[self.name] = block
        if self.apply:
            simulation.set_final(repaired, after, self.name)
        if fabric.is_global_zero:
            simulation.save_params(repaired, f"{self.name}_repaired.pt")
            ctx.logger.log_posttrain(self.name, block, step=ctx.rounds)


def validate_defenses(callbacks: Sequence[Any], setup: SetupContext) -> None:
    """Before any data is loaded: every post-training defense's ``validate``, and distinct names
    (they key ``summary.json`` and the repaired files)."""
    defenses = [cb for cb in callbacks if isinstance(cb, PostTrainingDefense)]
    names = [d.name for d in defenses]
    for d in defenses:
        if names.count(d.name) > 1:
            raise ValueError(f"callbacks: {names.count(d.name)} post-training defenses are named {d.name!r}; "
                             f"names must be distinct (set init_args.name on one), got {names}")
    for d in defenses:
        d.validate(setup)
