"""Server-side fine-tuning of the final global model on the auxiliary clean set.

The common post-training baseline: backdoor behaviour that the clean data does not reinforce
fades when the model keeps training on clean data (used as a baseline e.g. by Fang & Chen, "On the
Vulnerability of Backdoor Defenses for Federated Learning", AAAI 2023; and as the second stage of
Fine-Pruning, Liu et al., RAID 2018). ``train_on_aux`` is shared with ``FinePruning``.

``distillation_loss`` is the optional loss of that fine-tuning: a mix of the cross-entropy on the
aux labels and knowledge distillation from a frozen teacher, here theta_T itself (Hinton, Vinyals,
Dean, "Distilling the Knowledge in a Neural Network", 2015: ``T^2 KL(softmax(z_t/T) ||
softmax(z/T))``). On 800 clean images the hard labels say little beyond what theta_T already
fits; its soft outputs carry how it ranks the other classes, so the fine-tune is pulled back
toward theta_T's clean function instead of toward the 800 labels. The teacher sees only clean
aux inputs, on which a backdoor is silent. (Distilling a repaired student from the suspect model
on clean data is also the idea of Neural Attention Distillation, Li et al., ICLR 2021, with
attention maps in place of logits.)

The training loop is the clients' own, ``fedsim.clients.local_train``, with the server's streams:
shuffling from ``fedsim.runtime.seeding.generator(seed, name)`` and dropout from the global RNG
seeded with ``derive_seed(seed, name, "dropout")`` and restored afterwards, so the caller's RNG is
untouched and two defenses with different names draw different streams.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.clients import OPTIMIZERS, ClientConfig, Optimizer, TrainStreams, local_train
from fedsim.posttrain import PostTrainContext, PostTrainingDefense
from fedsim.schema import NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval, UnitIntervalOpenHigh


@contextmanager
def scratch_model(ctx: PostTrainContext, params: Tensor) -> Iterator[nn.Module]:
    """``ctx.model`` (the context's scratch copy) loaded with ``params``; its train/eval mode is
    put back afterwards, whatever happens inside."""
    model = ctx.model
    was_training = model.training
    ctx.layout.load(model, params.to(ctx.device))
    try:
        yield model
    finally:
        model.train(was_training)


def check_distill(weight: tuple[str, Any], temperature: tuple[str, Any]) -> None:
    """Refuses a distillation weight outside [0, 1] or a temperature <= 0 (field name, value)."""
    (nw, w), (nt, t) = weight, temperature
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise ValueError(f"{nw} must be in [0, 1] (0: cross-entropy only, 1: distillation only), got {w!r}")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"{nt} must be > 0, got {t!r}")


def distillation_loss(teacher: nn.Module, weight: float, temperature: float
                      ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``loss_fn`` for ``train_on_aux``: ``(1 - weight) * CE(z, y) + weight * T^2 *
    KL(softmax(z_t / T) || softmax(z / T))`` averaged over the batch, with ``z_t`` the logits of
    ``teacher`` (kept in eval mode, no gradient) on the same normalized inputs."""
    teacher.eval()
    t2 = temperature * temperature

    def loss(logits: Tensor, inputs: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            target = F.log_softmax(teacher(inputs) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean",
                      log_target=True) * t2
        if weight == 1:
            return kd
        return (1 - weight) * F.cross_entropy(logits, y) + weight * kd

    return loss


def distill_from_theta_t(ctx: PostTrainContext, weight: float, temperature: float
                         ) -> Optional[Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """The ``loss_fn`` of a fine-tune that distils theta_T with ``weight`` (None at weight 0: the
    plain cross-entropy). The teacher is a frozen copy of the context's model holding theta_T (eval
    mode, no gradients), so the scratch model stays free for the student."""
    if weight == 0:
        return None
    teacher = copy.deepcopy(ctx.model)
    ctx.layout.load(teacher, ctx.theta_t.to(ctx.device))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return distillation_loss(teacher, weight, temperature)


def distill_info(weight: float, temperature: float) -> dict[str, Any]:
    """The summary keys of a distilling fine-tune; none for weight 0, so earlier summaries stay as
    they were."""
    return {"distill": weight, "temperature": temperature} if weight > 0 else {}


def check_training(epochs: tuple[str, Any], lr: tuple[str, Any], batch_size: tuple[str, Any],
                   optimizer: Optional[tuple[str, Any]] = None) -> None:
    """Refuses bad settings of a server-side training pass (``train_on_aux``), each given as
    (field name in the error, value): epochs an int >= 0, lr > 0, batch size an int >= 1, the
    optimizer one of ``OPTIMIZERS``. Shared by every defense that fine-tunes on the aux set."""
    (ne, e), (nl, l), (nb, b) = epochs, lr, batch_size
    if not isinstance(e, int) or e < 0:
        raise ValueError(f"{ne} must be an int >= 0, got {e!r}")
    if not l > 0:
        raise ValueError(f"{nl} must be > 0, got {l!r}")
    if not isinstance(b, int) or b < 1:
        raise ValueError(f"{nb} must be an int >= 1, got {b!r}")
    if optimizer is not None and optimizer[1] not in OPTIMIZERS:
        raise ValueError(f"{optimizer[0]} must be one of {list(OPTIMIZERS)}, got {optimizer[1]!r}")


def train_on_aux(model: nn.Module, ctx: PostTrainContext, *, name: str, epochs: int, lr: float,
                 momentum: float = 0.9, batch_size: int = 64, optimizer: str = "sgd",
                 after_step: Optional[Callable[[], None]] = None,
                 loss_fn: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None) -> list[float]:
    """Train ``model`` in place, from the parameters it holds, on the context's auxiliary set
    with cross-entropy, or ``loss_fn(logits, inputs, y)`` where given (``local_train`` with the
    streams of (seed, ``name``)); returns the mean loss of each epoch. ``after_step`` runs after
    every optimizer step (e.g. to re-zero pruned channels). The model is left in train mode; the
    caller restores it."""
    if epochs == 0:
        return []
    config = ClientConfig(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=0.0, epochs=epochs,
                          batch_size=batch_size)
    hook = None if after_step is None else (lambda _model: after_step())
    res = local_train(model=model, layout=ctx.layout, global_params=ctx.layout.flatten(model), x=ctx.aux_x,
                      y=ctx.aux_y, config=config, seed=ctx.seed, round=ctx.rounds, client_id=-1,
                      normalize=ctx.normalize, streams=TrainStreams((ctx.seed, name), (ctx.seed, name, "dropout")),
                      after_step=hook, loss_dtype=torch.float64, loss_fn=loss_fn)
    return res.epoch_losses


class FineTuning(PostTrainingDefense):
    """Fine-tune theta_T on the server's auxiliary clean set.

    Args:
        epochs: passes over the auxiliary set.
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        batch_size: mini-batch size.
        optimizer: "sgd" or "adam".
        distill: weight of the distillation term from theta_T (``distillation_loss``; 0: plain
            cross-entropy on the aux labels, 1: distillation only).
        temperature: the distillation temperature T.
        apply: make the fine-tuned model the simulation's final global model.
        name: the summary key, file prefix and random-stream key.
    """

    name = "fine_tuning"

    def __init__(self, epochs: NonNegativeInt = 5, lr: PositiveFloat = 0.01, momentum: UnitIntervalOpenHigh = 0.9,
                 batch_size: PositiveInt = 64, optimizer: Optimizer = "sgd", distill: UnitInterval = 0.0,
                 temperature: PositiveFloat = 4.0, apply: bool = True, name: str = "fine_tuning") -> None:
        super().__init__(apply=apply, name=name)
        check_training(("fine_tuning.epochs", epochs), ("fine_tuning.lr", lr), ("fine_tuning.batch_size", batch_size),
                       ("fine_tuning.optimizer", optimizer))
        if not 0 <= momentum < 1:
            raise ValueError(f"fine_tuning.momentum must be in [0, 1), got {momentum!r}")
        check_distill(("fine_tuning.distill", distill), ("fine_tuning.temperature", temperature))
        self.distill, self.temperature = distill, temperature
        self.epochs, self.lr, self.momentum = epochs, lr, momentum
        self.batch_size, self.optimizer = batch_size, optimizer

    def repair(self, ctx: PostTrainContext) -> tuple[Tensor, dict[str, Any]]:
        loss_fn = distill_from_theta_t(ctx, self.distill, self.temperature)
        with scratch_model(ctx, ctx.theta_t) as model:
            losses = train_on_aux(
                model, ctx, name=self.name, epochs=self.epochs, lr=self.lr,
                momentum=self.momentum, batch_size=self.batch_size, optimizer=self.optimizer, loss_fn=loss_fn)
            repaired = ctx.layout.flatten(model)
        info = {"epochs": self.epochs, "optimizer": self.optimizer, "loss_per_epoch": losses,
                "train_loss": losses[-1] if losses else float("nan"), **distill_info(self.distill, self.temperature)}
        return repaired, info
