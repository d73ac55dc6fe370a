"""Post-training defenses: repair the final global model on the server's auxiliary data.

A post-training defense (FLAIN, fine-pruning, server fine-tuning, ...) subclasses
``PostTrainingDefense`` and implements ``repair``. The shared ``on_train_end`` then does what every
such defense must do the same way, so that they sit side by side in one results table:

1. evaluate the trained model theta_T (clean ACC, ASR, aux accuracy) - "before";
2. call ``repair`` on rank 0 (timed), broadcast the repaired vector to every rank;
3. evaluate it - "after"; write ``<name>_repaired.pt`` (atomically) and a ``summary[name]`` block
   with stable keys; log the before/after figures.

Every defense starts from the same theta_T (``simulation.trained_params``), never from another
defense's output, unless ``apply=True`` makes its result the simulation's final model.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import Tensor

from fedsim.callbacks import Callback
from fedsim.runtime.dist import run_on_zero


class PostTrainingDefense(Callback):
    """Base class.

    Args:
        apply: make the repaired model the simulation's final global model.
        name: the summary key / file prefix; None = the class's default name.
    """

    name = "defense"

    def __init__(self, apply: bool = True, name: Optional[str] = None) -> None:
        self.apply = apply
        if name is not None:
            if not name.isidentifier():
                raise ValueError(f"callbacks.name must be a Python identifier (letters, digits, _), got {name!r}")
            self.name = name

    def repair(self, simulation) -> tuple[Tensor, dict[str, Any]]:
        """Rank 0 only. Returns (repaired full parameter vector [numel], info dict of floats/ints/
        lists that goes into ``summary[name]``)."""
        raise NotImplementedError

    def _timed_repair(self, simulation) -> tuple[Tensor, dict[str, Any]]:
        start = time.perf_counter()
        repaired, info = self.repair(simulation)
        info["seconds"] = time.perf_counter() - start
        if getattr(simulation, "train_seconds", 0) > 0:  # cost relative to the training rounds
            info["seconds_vs_training"] = info["seconds"] / simulation.train_seconds
        return repaired, info

    def on_train_end(self, fabric, simulation) -> None:
        theta_t = simulation.trained_params
        # theta_T was just evaluated by the simulation (on every rank, so no collective is skipped
        # on one rank only); reuse it instead of a second pass over the test and aux sets
        before = simulation.summary.get("trained") or simulation.evaluate(theta_t)
        repaired, info = run_on_zero(fabric, lambda: self._timed_repair(simulation), (torch.empty_like(theta_t), {}))
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
            simulation.logger.log_posttrain(self.name, block, step=simulation.rounds)
