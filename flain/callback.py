"""The FLAIN post-training defense as a simulation callback.

Ding, Yang, Huang, "FLAIN: Mitigating Backdoor Attacks in Federated Learning via Flipping Weight
Updates of Low-Activation Input Neurons", ICMR 2025 (arXiv 2408.08655). After the last round the
server flips, in the chosen layer(s), the accumulated updates ``theta_T - theta_0`` of the input
neurons that its clean auxiliary data leaves (nearly) dormant; the threshold is raised while the
aux accuracy holds. The algorithm is in ``flain.functional``; this class wires it to the
simulation through the frozen ``fedsim.posttrain.PostTrainContext`` (theta_0, theta_T, the layout,
the auxiliary set, the attack's triggered auxiliary inputs, a scratch model, the logger), and the
base class ``fedsim.posttrain.PostTrainingDefense`` measures ACC/ASR before and after,
broadcasts, saves ``flain_repaired.pt`` and writes ``summary["flain"]``.

YAML::

    callbacks:
      - class_path: flain.FLAIN
        init_args: {layers: [fc1], mode: exact, tolerance: 0.001}
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from fedsim.clients import Optimizer
from fedsim.posttrain import PostTrainContext, PostTrainingDefense, SetupContext
from fedsim.repair.finetune import (check_distill, check_training, distill_from_theta_t, distill_info, scratch_model,
                                   train_on_aux)
from flain.activations import resolve_layer
from fedsim.schema import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval, bounded
from flain.functional import (MODES, RANKS, STOPS, TOLERANCE_UNITS, ThresholdResult, check_config, flain_repair,
                              flip_mask)
from flain.plots import plot_activations, plot_threshold

Mode = Literal[MODES]  # the schema's choices are flain.functional's
Stop = Literal[STOPS]
Rank = Literal[RANKS]
ToleranceUnit = Literal[TOLERANCE_UNITS]
Confidence = bounded(float, 0.5, 1, high_open=True)


class FLAIN(PostTrainingDefense):
    """Flip the weight updates of low-activation input neurons (FLAIN, arXiv 2408.08655).

    Args:
        layers: module names of the layers to repair, in the order they are repaired ("fc1", the
            first fully connected layer after the feature extractor, as in the paper; any
            ``nn.Linear``, or an ``nn.Conv2d`` by input channel). Each later layer is measured on
            the model with the earlier ones repaired; all drops count against theta_T's accuracy.
        mode: "exact" (visit only thresholds where a neuron crosses, keep the last k whose aux
            accuracy drop is <= tolerance) or "reference" (the authors' scripts: k = k_init,
            k_init + k_step, ... up to k_cap, keep the first k whose drop is >= tolerance).
        k_init: first threshold of the reference grid (scripts: 0.001; 0.0005 for FMNIST).
        k_step: step of the reference grid (scripts: 0.001 MNIST, 0.0001 FMNIST and CIFAR-10).
        k_cap: largest threshold (both modes); input neurons above it are never flipped.
        tolerance: aux accuracy drop, as a fraction in [0, 1] (scripts: 0 MNIST, 0.024 FMNIST,
            0.001 CIFAR-10).
        tolerance_unit: "accuracy" (the tolerance is the aux accuracy drop itself) or "error"
            (exact mode: a fraction of theta_T's aux error, so the allowed drop is
            ``tolerance * (1 - aux accuracy of theta_T)``; the drop used is reported as
            ``tolerance_effective``). Not in the paper.
        stop: exact mode's stopping rule: "drop" (keep the last k whose observed drop is
            <= tolerance) or "confident" (keep the last k before the first whose drop exceeds
            tolerance with the given confidence, from paired per-image correctness against
            theta_T, so a single image does not decide k). Ignored in reference mode.
        confidence: one-sided confidence of the "confident" rule, in [0.5, 1).
        rank: the order in which input neurons are flipped: "activation" (FLAIN: lowest mean
            clean activation first) or "update_ratio" (exact mode only: largest accumulated-update
            column norm per unit of clean activation first, ``flain.functional.update_ratio_order``;
            catches clean-active neurons with disproportionate updates, which an attacker who
            avoids dormant neurons must use; k is then the fraction of neurons flipped).
        rank_eps: with "update_ratio", the activation floor as a fraction of the mean positive
            activation (small: close to FLAIN's order; large: close to ranking by update norm).
            A list runs one stage per value on each layer, each on the neurons the earlier
            stages left and against the earlier stage's accuracy (reported as ``fc1#2``, ...).
        max_drop: with stop "confident", also stop every layer's and stage's search where the aux
            accuracy falls more than this below theta_T's (one budget for all; null = no cap).
        finetune_epochs: after flipping, fine-tune the repaired model this many passes over the
            auxiliary set (0: none, FLAIN as published). The flipped weight columns are held at
            their flipped values after every step (``finetune_freeze``), so the fine-tuning
            can give back the clean accuracy the flips cost but cannot undo the flips.
        finetune_lr: learning rate of that fine-tuning.
        finetune_optimizer: "adam" or "sgd" (momentum 0.9).
        finetune_batch_size: its mini-batch size.
        finetune_freeze: hold the flipped columns fixed during the fine-tuning (False: every
            parameter trains).
        finetune_distill: weight of knowledge distillation from theta_T (the trained model,
            before the flips) in the fine-tuning loss, ``fedsim.repair.finetune.distillation_loss``
            (0: cross-entropy on the aux labels, as before; 1: distillation only). Not in the paper.
        finetune_temperature: the distillation temperature T.
        rescale: rescale the repaired layer to the Frobenius norm of its trained weights (the
            scripts do; in exact mode the rescaled layer is what the search evaluates).
        batch_size: batch size of the forward passes over the auxiliary set.
        plots: write <name>_activations.png and <name>_threshold.png into the run directory.
        name: key of the summary block, metrics prefix and file prefix (run two FLAIN
            configurations side by side under different names).
        apply: make the repaired model the simulation's final global model.
    """

    name = "flain"

    def __init__(self, layers: Sequence[str] = ("fc1",), mode: Mode = "exact",
                 k_init: NonNegativeFloat = 0.001, k_step: PositiveFloat = 0.0001, k_cap: NonNegativeFloat = 1.0,
                 tolerance: UnitInterval = 0.001, stop: Stop = "drop", confidence: Confidence = 0.95,
                 rank: Rank = "activation", rank_eps: Union[PositiveFloat, list[PositiveFloat]] = 0.01,
                 max_drop: Optional[UnitInterval] = None, tolerance_unit: ToleranceUnit = "accuracy",
                 finetune_epochs: NonNegativeInt = 0, finetune_lr: PositiveFloat = 1e-4,
                 finetune_optimizer: Optimizer = "adam", finetune_batch_size: PositiveInt = 64,
                 finetune_freeze: bool = True, finetune_distill: UnitInterval = 0.0,
                 finetune_temperature: PositiveFloat = 4.0,
                 rescale: bool = True, batch_size: PositiveInt = 512, plots: bool = True,
                 apply: bool = True, name: str = "flain") -> None:
        super().__init__(apply=apply, name=name)
        layers = [layers] if isinstance(layers, str) else list(layers)
        check_config(layers, mode, k_init, k_step, k_cap, tolerance, batch_size, stop, confidence,
                     rank, rank_eps, max_drop, tolerance_unit)
        self.tolerance_unit = tolerance_unit
        self.stop, self.confidence, self.rank, self.rank_eps = stop, confidence, rank, rank_eps
        self.max_drop = max_drop
        check_training(("flain.finetune_epochs", finetune_epochs), ("flain.finetune_lr", finetune_lr),
                       ("flain.finetune_batch_size", finetune_batch_size), ("flain.finetune_optimizer", finetune_optimizer))
        self.finetune_epochs, self.finetune_lr = finetune_epochs, finetune_lr
        self.finetune_optimizer, self.finetune_batch_size = finetune_optimizer, finetune_batch_size
        self.finetune_freeze = finetune_freeze
        check_distill(("flain.finetune_distill", finetune_distill), ("flain.finetune_temperature", finetune_temperature))
        self.finetune_distill, self.finetune_temperature = finetune_distill, finetune_temperature
        self.layers, self.mode, self.rescale, self.plots = layers, mode, rescale, plots
        self.k_init, self.k_step, self.k_cap = k_init, k_step, k_cap
        self.tolerance, self.batch_size = tolerance, batch_size

    def validate(self, setup: SetupContext) -> None:
        """Before any data is loaded: an unknown layer fails now, not after the run."""
        for name in self.layers:
            resolve_layer(setup.model, name)

    def repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        if ctx.aux_x.shape[0] == 0:
            raise ValueError("flain: the auxiliary set is empty; FLAIN needs clean auxiliary "
                             "samples (set fed.aux_per_class above 0)")
        device, triggered = ctx.device, ctx.triggered_aux_x
        vec, results = flain_repair(
            ctx.model, ctx.layout, ctx.theta0.to(device), ctx.theta_t.to(device),
            ctx.normalize(ctx.aux_x.to(device)), ctx.aux_y.to(device), self.layers, self.mode,
            self.k_init, self.k_step, self.k_cap, self.tolerance, self.rescale, self.batch_size,
            triggered_x=None if triggered is None else ctx.normalize(triggered.to(device)),
            stop=self.stop, confidence=self.confidence, rank=self.rank, rank_eps=self.rank_eps,
            max_drop=self.max_drop, tolerance_unit=self.tolerance_unit)
        self._log(ctx, results)
        info = summarize(results, self.tolerance_unit)
        if self.finetune_epochs > 0:
            vec, info["finetune"] = self._finetune(ctx, vec, results)
        return vec, info

    def _finetune(self, ctx: PostTrainContext, vec: Tensor, results: list[ThresholdResult]
                  ) -> tuple[Tensor, dict[str, Any]]:
        """Fine-tunes the flipped model on the aux set; the flipped columns stay as flipped."""
        flipped: dict[str, Tensor] = {}  # layer -> bool [in], over all its stages
        for r in results:
            layer = r.layer.split("#")[0]
            mask = flip_mask(r.order, r.k)
            flipped[layer] = mask if layer not in flipped else flipped[layer] | mask
        loss_fn = distill_from_theta_t(ctx, self.finetune_distill, self.finetune_temperature)  # theta_T before the flips
        with scratch_model(ctx, vec) as model:
            modules = dict(model.named_modules())
            held = {layer: modules[layer].weight.detach()[:, mask].clone()
                    for layer, mask in flipped.items() if self.finetune_freeze and mask.any()}

            def hold() -> None:
                with torch.no_grad():
                    for layer, values in held.items():
                        modules[layer].weight[:, flipped[layer]] = values

            losses = train_on_aux(model, ctx, name=f"{self.name}_finetune", epochs=self.finetune_epochs,
                                  lr=self.finetune_lr, batch_size=self.finetune_batch_size,
                                  optimizer=self.finetune_optimizer, after_step=hold if held else None,
                                  loss_fn=loss_fn)
            out = ctx.layout.flatten(model)
        return out, {"epochs": self.finetune_epochs, "lr": self.finetune_lr,
                     "optimizer": self.finetune_optimizer, "frozen_columns": int(sum(m.sum() for m in flipped.values()))
                     if self.finetune_freeze else 0, "loss_per_epoch": losses,
                     **distill_info(self.finetune_distill, self.finetune_temperature)}

    def _log(self, ctx: PostTrainContext, results: list[ThresholdResult]) -> None:
        step, logger = ctx.rounds, ctx.logger
        for r in results:
            key = f"{self.name}/{r.layer}"
            hists = {f"{key}/activation_clean": r.activations}
            if r.activations_triggered is not None:
                hists[f"{key}/activation_triggered"] = r.activations_triggered
            logger.log_histograms(hists, step)  # the same bins for clean and triggered
            logger.log_table(f"{key}/curve", ["k", "aux_acc", "flipped"],
                             [list(c) for c in r.curve], line=("k", "aux_acc"),
                             title=f"{self.name} {r.layer}: aux accuracy vs threshold k")
            # One row per layer at the final round: the curve itself is a table, because the
            # x-axis of every logged metric is the round.
            logger.log_posttrain(f"{self.name}/{r.layer}",
                                 {"k": r.k if r.k is not None else -1.0,
                                  "flipped_neurons": r.flipped, "evaluations": len(r.curve)},
                                 step)
        if self.plots:
            paths = [plot_activations(ctx.run_dir / f"{self.name}_activations.png", results,
                                      [r.activations for r in results],
                                      [r.activations_triggered for r in results]),
                     plot_threshold(ctx.run_dir / f"{self.name}_threshold.png", results)]
            for p in paths:
                logger.log_image(f"{self.name}/{p.stem}", p, step)


def summarize(results: list[ThresholdResult], tolerance_unit: str = "accuracy") -> dict[str, Any]:
    """The ``summary["flain"]`` block. With one layer ``k``/``tolerance_reached``/``curve`` are
    that layer's; with several they are lists in layer order. Counts are summed over layers.
    With ``tolerance_unit="error"`` it also holds the unit and ``tolerance_effective``, the drop
    each search allowed (absent otherwise, so earlier summaries stay as they were)."""
    per_layer = {r.layer: {"k": r.k, "flipped_neurons": r.flipped, "total_neurons": r.total,
                           "aux_acc_after": r.aux_acc_after, "tolerance_reached":
                           r.tolerance_reached, "rescaled": r.rescaled, "fast_path": r.fast_path,
                           "curve": {"k": [c[0] for c in r.curve],
                                     "aux_acc": [c[1] for c in r.curve],
                                     "flipped": [c[2] for c in r.curve]}}
                 for r in results}
    one = len(results) == 1
    pick = (lambda key: per_layer[results[0].layer][key]) if one else \
        (lambda key: [per_layer[r.layer][key] for r in results])
    block = {"mode": results[0].mode, "stop": results[0].stop, "rank": results[0].rank, "layers": [r.layer for r in results], "k": pick("k"),
             "flipped_neurons": sum(r.flipped for r in results),
             "total_neurons": sum(r.total for r in results if r.stage == 1),  # each layer once
             "aux_acc_before": results[0].aux_acc_before, "aux_acc_after": results[-1].aux_acc_after,
             "tolerance_reached": pick("tolerance_reached"), "curve": pick("curve"),
             "per_layer": per_layer}
    if tolerance_unit != "accuracy":
        block["tolerance_unit"] = tolerance_unit
        block["tolerance_effective"] = results[0].tolerance if one else [r.tolerance for r in results]
    return block
