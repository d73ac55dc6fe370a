"""A3FL: a trigger the attacker re-optimises every round against the current global model.

Zhang, Jia, Chen, Lin, Wu, "A3FL: Adversarially Adaptive Backdoor Attacks to Federated Learning",
NeurIPS 2023 (authors' code: github hfzhang31/A3FL, ``fl_utils/attacker.py``; also BackFed's
``backfed/poisons/a3fl.py``). A fixed trigger fights the benign updates, which keep unlearning
it; A3FL instead adapts the trigger to the global model so that the backdoor needs little
change of the model to work, and makes it robust to the model *unlearning* it:

    for outer step s = 0 .. steps-1:
        every adv_every steps (not at s = 0): theta' = a copy of the global model theta trained
            for adv_epochs on triggered inputs with their TRUE labels (the model that unlearns
            the trigger, a stand-in for benign training and for defenses), w = cos(theta', theta)
        for each batch of the attacker's eligible samples (true label != target; one-to-one:
        source class):
            L = CE(theta(x + trigger), target) + lam * w * CE(theta'(x + trigger), target)
            pattern <- clip(pattern - trigger_lr * sign(dL/dpattern), 0, 1)

then trains like BadNets with the new trigger (``TargetedPoison``: ``poison_fraction`` of each
batch's eligible samples stamped and relabelled). The trigger is ``pattern`` on the pixels of a
``size x size`` box (all channels), placed as BadNets places its square (default: 5x5,
bottom-right, 28x28; 4x4 two pixels from the corner of larger images), initialised to
``init_value`` (the authors: 0.5). Authors' values: 200 outer epochs, trigger_lr 0.01, the
adversarial model refreshed every outer epoch (dm_adv_K 1) with 5 SGD epochs (lr 0.01,
momentum 0.9, weight decay 5e-4), lam (noise_loss_lambda) 0.01, one adversarial model; our
defaults are cheaper (10 outer steps on at most 512 samples, refresh every 2 steps, 1 epoch) so
that a round costs about one extra client on a CPU; raise them for the paper's setting.

Who optimises: the authors' first adversary of each round searches the trigger (on its own
data, from the global model it received); all attackers of the round then use it. Here the
first malicious client trained in a round does it in ``before_training``; the trigger persists
across rounds (each search starts from the last trigger) and is checkpointed
(``state_dict`` / ``load_state_dict``).

ASR: the server's ASR set is built once from ``test_set`` when the run starts; this poison
keeps the tensors ``test_set`` returned and restamps them in place with the current trigger
after every search (and after loading a checkpoint), so every evaluation, before and after
post-training defenses, uses the attacker's latest trigger. Only the pixels of the box change,
so restamping a stamped tensor equals stamping the clean one.

Limitation: the trigger lives in the process that trains the attacker, so A3FL refuses to run
with more than one process (``--devices 1``); ranks would otherwise hold different triggers.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.attacks.base import AttackContext, ClientContext
from fedsim.attacks.poison import TargetedPoison
from fedsim.attacks.triggers import CORNERS, Corner, box_origin, patch_mask
from fedsim.schema import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval


class A3FL(TargetedPoison):
    """Adversarially adaptive trigger (Zhang et al., NeurIPS 2023; see the module docstring).

    Args:
        target: the attacker's target label.
        source_class: one-to-one attack from this class; None means all-to-one.
        poison_fraction: share of the eligible samples of each batch to poison, in [0, 1].
        size: side of the trigger box in pixels; None: 5 for images up to 28 pixels high, else 4.
        position: "bottom_right", "bottom_left", "top_left", "top_right", "center", or an
            explicit [row, col] of the box's top-left pixel (BadNets' placement).
        margin: pixels between the box and the nearest borders; None: 0 up to 28 pixels, else 2.
        init_value: initial value of every trigger pixel, in [0, 1] (authors: 0.5).
        steps: outer optimisation steps (passes over the samples) per round, >= 0 (0: the trigger
            stays at its initial value, a gray BadNets).
        trigger_lr: size of each signed-gradient step on the pattern, > 0 (authors: 0.01).
        lam: weight of the adversarially unlearned model's loss, >= 0 (authors: 0.01; 0: no
            adversarial model is trained).
        adv_every: retrain the adversarial model every this many outer steps, >= 1 (authors: 1).
        adv_epochs: epochs of the adversarial model's unlearning training, >= 1 (authors: 5).
        adv_lr: SGD learning rate of the adversarial model (momentum 0.9, weight decay 5e-4).
        max_samples: at most this many of the client's samples are used to optimise (drawn with
            the client's attack generator); None: all.
        batch_size: batch size of the trigger and adversarial-model optimisation.
    """

    def __init__(
        self,
        target: NonNegativeInt = 5,
        source_class: Optional[NonNegativeInt] = None,
        poison_fraction: UnitInterval = 0.5,
        size: Optional[PositiveInt] = None,
        position: Union[Corner, tuple[int, int]] = "bottom_right",
        margin: Optional[NonNegativeInt] = None,
        init_value: UnitInterval = 0.5,
        steps: NonNegativeInt = 10,
        trigger_lr: PositiveFloat = 0.01,
        lam: NonNegativeFloat = 0.01,
        adv_every: PositiveInt = 2,
        adv_epochs: PositiveInt = 1,
        adv_lr: PositiveFloat = 0.01,
        max_samples: Optional[PositiveInt] = 512,
        batch_size: PositiveInt = 64,
    ) -> None:
        super().__init__(target, source_class, poison_fraction)
        if size is not None and size < 1:
            raise ValueError(f"A3FL.size must be >= 1, got {size}")
        if isinstance(position, str) and position not in CORNERS:
            raise ValueError(f"A3FL.position must be one of {list(CORNERS)} or [row, col], got {position!r}")
        if not isinstance(position, str) and (len(position) != 2 or min(position) < 0):
            raise ValueError(f"A3FL.position must be [row, col] with row, col >= 0, got {position!r}")
        if margin is not None and margin < 0:
            raise ValueError(f"A3FL.margin must be >= 0, got {margin}")
        if not 0.0 <= init_value <= 1.0:
            raise ValueError(f"A3FL.init_value must be in [0, 1] (raw pixel scale), got {init_value}")
        if steps < 0:
            raise ValueError(f"A3FL.steps must be >= 0, got {steps}")
        if not trigger_lr > 0:
            raise ValueError(f"A3FL.trigger_lr must be > 0, got {trigger_lr}")
        if not lam >= 0:
            raise ValueError(f"A3FL.lam must be >= 0, got {lam}")
        for name, value in (("adv_every", adv_every), ("adv_epochs", adv_epochs), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"A3FL.{name} must be >= 1, got {value}")
        if not adv_lr > 0:
            raise ValueError(f"A3FL.adv_lr must be > 0, got {adv_lr}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"A3FL.max_samples must be >= 1 or None, got {max_samples}")
        self.size, self.position, self.margin, self.init_value = size, position, margin, init_value
        self.steps, self.trigger_lr, self.lam = steps, trigger_lr, lam
        self.adv_every, self.adv_epochs, self.adv_lr = adv_every, adv_epochs, adv_lr
        self.max_samples, self.batch_size = max_samples, batch_size
        self.searched_round: Optional[int] = None  # last round whose trigger was optimised
        self._stamped: list[weakref.ref] = []  # tensors test_set returned, restamped on change

    # ----------------------------------------------------------------- setup and trigger
    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ValueError("A3FL: the optimised trigger lives in the process that trains the attacker; "
                             f"run with one process (--devices 1), got {torch.distributed.get_world_size()}")
        hw = ctx.image_shape[1:]
        small = hw[0] <= 28
        size = self.size if self.size is not None else (5 if small else 4)
        margin = self.margin if self.margin is not None else (0 if small else 2)
        top, left = box_origin(hw, (size, size), self.position, margin)
        try:
            self.mask = patch_mask(hw, size, top, left, "square")  # [H, W] bool
        except ValueError as err:
            raise ValueError(f"A3FL.size / A3FL.position / A3FL.margin: {err}") from None
        self.pattern = torch.full(tuple(ctx.image_shape), float(self.init_value))  # [C, H, W] in [0, 1]
        self.searched_round = None

    def _with(self, x: Tensor, pattern: Tensor) -> Tensor:
        return torch.where(self.mask.to(x.device), pattern.to(device=x.device, dtype=x.dtype), x)

    def apply_trigger(self, x: Tensor, ctx: Optional[ClientContext]) -> Tensor:
        return self._with(x, self.pattern)

    def test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        xs, ys = super().test_set(x, y)
        self._stamped = [r for r in self._stamped if r() is not None] + [weakref.ref(xs)]
        return xs, ys

    @torch.no_grad()
    def _restamp(self) -> None:
        for ref in self._stamped:
            t = ref()
            if t is not None:
                t.copy_(self._with(t, self.pattern))
        self._stamped = [r for r in self._stamped if r() is not None]

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern.detach().cpu().clone(), "searched_round": self.searched_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "pattern" in state:
            pattern = state["pattern"].float()
            if tuple(pattern.shape) != tuple(self.pattern.shape):
                raise ValueError(f"A3FL: checkpointed trigger has shape {tuple(pattern.shape)}, "
                                 f"the data needs {tuple(self.pattern.shape)}")
            self.pattern = pattern.clone()
            self.searched_round = state.get("searched_round")
            self._restamp()

    # ----------------------------------------------------------------- the search
    def before_training(self, model: nn.Module, x: Tensor, y: Tensor, normalize: Callable[[Tensor], Tensor],
                        ctx: ClientContext, gen: torch.Generator) -> None:
        if self.searched_round == ctx.round:  # one search per round: the first attacker's
            return
        self.searched_round = ctx.round
        if self.steps == 0:
            return
        if self.max_samples is not None and len(y) > self.max_samples:
            keep = torch.randperm(len(y), generator=gen)[: self.max_samples].to(y.device)
            x, y = x[keep], y[keep]
        if not self.eligible(y).any():
            return
        self.pattern = search_trigger(
            model, x, y, self.eligible(y), self.target, self.mask, self.pattern, normalize, gen,
            steps=self.steps, trigger_lr=self.trigger_lr, lam=self.lam, adv_every=self.adv_every,
            adv_epochs=self.adv_epochs, adv_lr=self.adv_lr, batch_size=self.batch_size)
        self._restamp()


def search_trigger(model: nn.Module, x: Tensor, y: Tensor, eligible: Tensor, target: int, mask: Tensor,
                   pattern: Tensor, normalize: Callable[[Tensor], Tensor], gen: torch.Generator, *,
                   steps: int, trigger_lr: float, lam: float, adv_every: int, adv_epochs: int,
                   adv_lr: float, batch_size: int) -> Tensor:
    """A3FL's trigger search (see the module docstring). ``model`` (the global model) is used in
    eval mode and left as it was; returns the new pattern ``[C, H, W]`` in [0, 1]."""
    device = x.device
    mask = mask.to(device)
    t = pattern.detach().to(device).clone()
    xe = x[eligible]
    labels = torch.full((len(xe),), target, dtype=y.dtype, device=device)
    was_training = model.training
    model.eval()
    adv: Optional[nn.Module] = None
    weight = 0.0
    try:
        for step in range(steps):
            if lam > 0 and step > 0 and step % adv_every == 0:
                adv, weight = unlearning_model(model, x, y, mask, t, normalize, gen, adv_epochs, adv_lr, batch_size)
            for idx in _batches(len(xe), batch_size, gen, device):
                t.requires_grad_(True)
                xt = normalize(torch.where(mask, t, xe[idx]))
                loss = F.cross_entropy(model(xt), labels[idx])
                if adv is not None:
                    loss = loss + lam * weight * F.cross_entropy(adv(xt), labels[idx])
                (grad,) = torch.autograd.grad(loss, t)
                with torch.no_grad():
                    t = (t - trigger_lr * grad.sign()).clamp_(0.0, 1.0)
    finally:
        model.train(was_training)
    return t.detach()


def unlearning_model(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, pattern: Tensor,
                     normalize: Callable[[Tensor], Tensor], gen: torch.Generator, epochs: int, lr: float,
                     batch_size: int) -> tuple[nn.Module, float]:
    """A copy of ``model`` trained on triggered inputs with their true labels (it unlearns the
    trigger), in eval mode with frozen weights, and its cosine similarity to ``model``."""
    adv = copy.deepcopy(model)
    adv.train()
    opt = torch.optim.SGD(adv.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    p = pattern.detach()
    for _ in range(epochs):
        for idx in _batches(len(y), batch_size, gen, x.device):
            loss = F.cross_entropy(adv(normalize(torch.where(mask, p, x[idx]))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    adv.eval()
    for q in adv.parameters():
        q.requires_grad_(False)
    with torch.no_grad():
        a = torch.cat([q.reshape(-1) for q in adv.parameters()])
        b = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
        weight = float(F.cosine_similarity(a, b, dim=0))
    return adv, weight


def _batches(n: int, batch_size: int, gen: torch.Generator, device) -> list[Tensor]:
    perm = torch.randperm(n, generator=gen).to(device)
    return list(perm.split(batch_size))
