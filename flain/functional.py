"""FLAIN as pure functions: flip the updates of low-activation input neurons, search the threshold.

Ding, Yang, Huang, "FLAIN: Mitigating Backdoor Attacks in Federated Learning via Flipping Weight
Updates of Low-Activation Input Neurons", ICMR 2025 (arXiv 2408.08655); authors' scripts:
github dingbinb/FLAIN ``src/defense_*(FLAIN).py``.

For a layer with initial weights ``W0``, trained weights ``WT = W0 + D`` and mean input-neuron
activations ``a`` on clean auxiliary data, threshold ``k`` gives

    W_k[:, j] = W0[:, j] - D[:, j]   if 0 <= a_j <= k        (the update of neuron j is flipped)
    W_k[:, j] = W0[:, j] + D[:, j]   otherwise               (bias untouched, as in the scripts)

Two searches over ``k`` (``search_threshold``), both measuring the aux-accuracy drop against the
model before FLAIN:

* ``"reference"``: the scripts' loop. ``k = k_init, k_init + k_step, ...`` (Python float
  accumulation) while ``k <= k_cap``; stop at the FIRST ``k`` with ``drop >= tolerance`` and keep
  it. The search is done without rescaling; the chosen layer is then rescaled to the Frobenius
  norm of ``WT``. If no ``k`` reaches the tolerance, the scripts leave the last ``k``'s flips in
  place without rescaling (and then crash printing ``None``); we keep those flips, do not rescale,
  and set ``tolerance_reached=False``. The scripts' values: MNIST/EMNIST k_init 0.001, step 0.001,
  tolerance 0; Fashion-MNIST 0.0005 / 0.0001 / 0.024; CIFAR-10 0.001 / 0.0001 / 0.001; cap 1.
* ``"exact"`` (default): only thresholds at which a neuron crosses change anything, so visit the
  sorted distinct activations in ``[0, k_cap]``; keep the LAST ``k`` whose drop stays within the
  tolerance (``drop <= tolerance``), stopping at the first that exceeds it. With ``rescale`` the
  rescaled layer is what is evaluated, so the returned model honours the tolerance.
  ``stop="confident"`` replaces that rule by one that a single image cannot decide: compare each
  candidate's per-input correctness on the aux set with theta_T's (paired: ``lost`` inputs it gets
  wrong that theta_T got right, ``won`` the reverse), and stop at the first k whose drop exceeds
  the tolerance with confidence ``confidence`` (one-sided normal bound on the paired difference,
  ``(lost - won - z * sqrt(lost + won - (lost - won)^2 / n)) / n > tolerance``). With 800 aux
  images, tolerance 0 and 95% confidence, three lost images and none won stop it; one never does.

Several layers are repaired one after another, in the order given: each layer's activations are
measured on the model with the earlier layers already repaired, and every layer's drop is
measured against the accuracy before FLAIN, so in exact mode the total drop stays within the
tolerance. Accuracies are fractions in [0, 1].

``tolerance_unit="error"`` (exact mode; our addition, not in the paper or the scripts) reads the
tolerance as a fraction of theta_T's aux *error*: the search may let the aux error grow by that
fraction, ``drop <= tolerance * (1 - acc_T)``. The same setting then flips more on a model that is
still far from converged (more error to spare, more accuracy a fine-tune can give back) than on
one at ~99%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from fedsim.params import ParamLayout
from flain.activations import FlipEvaluator, LayerSpec, NetworkSplit, resolve_layer

MODES = ("exact", "reference")
STOPS = ("drop", "confident")
RANKS = ("activation", "update_ratio")
TOLERANCE_UNITS = ("accuracy", "error")


def column_norms(delta: Tensor) -> Tensor:
    """``[in]`` L2 norm of each input neuron's slice ``delta[:, j]`` (Linear ``[out, in]``,
    Conv2d ``[out, in, kh, kw]``), in float64."""
    dims = [d for d in range(delta.dim()) if d != 1]
    return delta.double().pow(2).sum(dims).sqrt()


def update_ratio_order(act: Tensor, delta: Tensor, eps: float = 0.01) -> Tensor:
    """Pseudo-activations that make the search flip neurons by *update ratio* instead of activation.

    The gradient of a Linear layer's column j is ``sum_i delta_i * x_ij``: benign training moves
    column j in proportion to how active input neuron j is on the training data. A column whose
    accumulated update ``||D[:, j]||`` is large for its mean clean activation ``a_j`` was trained on
    inputs where j is much more active than on clean data (triggered inputs), so the score
    ``s_j = ||D[:, j]|| / (a_j + eps * mean_{a > 0} a)`` ranks the dormant-but-updated neurons
    FLAIN flips first (``a_j = 0``) and, after them, clean-active neurons with disproportionate
    updates, which an attacker who avoids dormant neurons (``fedsim.attacks.DormancyAware``) must
    use. Returns ``[in]`` values in ``(0, 1]``: the neuron with the i-th largest score gets
    ``i / m`` (m eligible neurons), so threshold k flips the top ``k * m`` neurons by score and
    the ordinary searches apply unchanged; neurons with ``a_j < 0`` get -1 (never flipped, as in
    FLAIN)."""
    act64 = act.double()
    eligible = act64 >= 0
    positive = act64[act64 > 0]
    floor = eps * (float(positive.mean()) if positive.numel() else 1.0) + 1e-12
    score = column_norms(delta).to(act64.device) / (act64.clamp_min(0) + floor)
    pseudo = torch.full_like(act64, -1.0)
    idx = eligible.nonzero().squeeze(1)
    m = idx.numel()
    if m:
        order = idx[torch.argsort(-score[idx], stable=True)]
        pseudo[order] = torch.arange(1, m + 1, dtype=torch.float64, device=act64.device) / m
    return pseudo.to(act.dtype)


def flip_mask(act: Tensor, k: Optional[float]) -> Tensor:
    """Input neurons whose update is flipped at threshold ``k``: ``0 <= act <= k`` (none if None).
    ``act <= k`` compares in ``act``'s dtype, like the scripts' per-element test."""
    if k is None:
        return torch.zeros_like(act, dtype=torch.bool)
    return (act >= 0) & (act <= k)


def flip_columns(w0: Tensor, delta: Tensor, act: Tensor, k: Optional[float]) -> Tensor:
    """``W0 + delta`` with the input-neuron slices (dim 1) where ``0 <= act <= k`` set to
    ``W0 - delta``. Works for Linear ``[out, in]`` and Conv2d ``[out, in, kh, kw]`` weights."""
    w = w0 + delta
    mask = flip_mask(act, k)
    w[:, mask] = w0[:, mask] - delta[:, mask]
    return w


@dataclass
class ThresholdResult:
    """Outcome of the threshold search for one layer.

    ``curve`` holds ``(k, aux_acc, n_flipped)`` for every distinct flipped set the search
    evaluated, in the order visited; ``aux_acc_after`` is the accuracy of the returned layer
    (after rescaling, when done); ``k`` is None when no neuron is flipped."""

    k: Optional[float]
    flipped: int
    total: int
    aux_acc_before: float
    aux_acc_search: float
    tolerance_reached: bool
    mode: str
    curve: list[tuple[float, float, int]] = field(default_factory=list)
    layer: str = ""
    aux_acc_after: float = float("nan")
    rescaled: bool = False
    fast_path: bool = True
    activations: Optional[Tensor] = None  # [in] on clean aux data (the search's ranking)
    activations_triggered: Optional[Tensor] = None  # [in] on triggered aux data, if given
    stop: str = "drop"  # exact mode's stopping rule ("drop" / "confident"); "first" in reference
    rank: str = "activation"  # the neurons' order: by activation (FLAIN) or "update_ratio"
    order: Optional[Tensor] = None  # [in] the values the search thresholded (activations or pseudo)
    stage: int = 1  # with a list of rank_eps: the stage on this layer (reported as "<layer>#<stage>")
    tolerance: float = float("nan")  # the drop the search allowed (as given to search_threshold)


def search_threshold(act: Tensor, aux_acc: Callable[[Tensor], float], *, mode: str = "exact",
                     k_init: float = 0.001, k_step: float = 0.0001, k_cap: float = 1.0,
                     tolerance: float = 0.001, acc_before: Optional[float] = None,
                     stop: str = "drop", confidence: float = 0.95,
                     aux_correct: Optional[Callable[[Tensor], Tensor]] = None,
                     correct_before: Optional[Tensor] = None, max_drop: Optional[float] = None,
                     acc_ref: Optional[float] = None) -> ThresholdResult:
    """Searches the flip threshold. ``aux_acc(mask)`` returns the aux accuracy with the input
    neurons in ``mask`` (bool ``[in]``) flipped; ``acc_before`` defaults to ``aux_acc(no flips)``.
    The flipped sets are nested (the first n neurons by activation), so each is evaluated once.

    ``stop="confident"`` (exact mode) needs ``aux_correct(mask)``, the ``[n]`` bool vector of
    correctly classified aux inputs, and ``correct_before`` (theta_T's; default: no flips)."""
    if mode not in MODES:
        raise ValueError(f"flain.mode must be one of {list(MODES)}, got {mode!r}")
    if stop not in STOPS:
        raise ValueError(f"flain.stop must be one of {list(STOPS)}, got {stop!r}")
    eligible = torch.argsort(act, stable=True)[int((act < 0).sum()):]  # ascending, act >= 0
    cache: dict[int, object] = {}
    paired = mode == "exact" and stop == "confident"
    if paired and aux_correct is None:
        raise ValueError("flain: stop='confident' needs the per-input correctness (aux_correct)")

    def value_of(n: int):  # accuracy (or correctness vector) with the n lowest neurons flipped
        if n not in cache:
            mask = torch.zeros_like(act, dtype=torch.bool)
            mask[eligible[:n]] = True
            cache[n] = aux_correct(mask) if paired else aux_acc(mask)
        return cache[n]

    def acc_of(n: int) -> float:
        v = value_of(n)
        return int(v.sum()) / v.numel() if paired else v

    if paired:
        before = value_of(0) if correct_before is None else correct_before
        acc0 = int(before.sum()) / before.numel() if acc_before is None else acc_before
        z = NormalDist().inv_cdf(confidence)
        cap = None if max_drop is None else ((acc0 if acc_ref is None else acc_ref), max_drop)
        k, n, reached, curve = _confident(act, value_of, before, k_cap, tolerance, z, cap)
    else:
        acc0 = acc_of(0) if acc_before is None else acc_before
        search = _reference if mode == "reference" else _exact
        k, n, reached, curve = search(act, acc_of, acc0, k_init, k_step, k_cap, tolerance)
    return ThresholdResult(k, n, act.numel(), acc0, acc_of(n), reached, mode, curve,
                           stop="confident" if paired else ("drop" if mode == "exact" else "first"),
                           tolerance=tolerance)


def paired_drop_bound(before: Tensor, after: Tensor, z: float) -> tuple[float, float]:
    """(observed drop, lower confidence bound of the true drop) in accuracy, from paired
    per-input correctness on the same inputs: ``lost`` inputs right before and wrong after,
    ``won`` the reverse; drop = (lost - won) / n with the paired standard error
    sqrt(lost + won - (lost - won)^2 / n) / n (the normal approximation of McNemar's setting)."""
    n = before.numel()
    lost = int((before & ~after).sum())
    won = int((~before & after).sum())
    diff = lost - won
    se = math.sqrt(max(lost + won - diff * diff / n, 0.0)) / n
    return diff / n, diff / n - z * se


def _confident(act, correct_of, before, k_cap, tolerance, z, cap=None):
    """Exact-mode candidates; keep the last k before the first whose drop exceeds ``tolerance``
    with the given confidence (its lower bound > tolerance), so one image never decides.
    ``cap = (acc_ref, max_drop)`` also stops at the first k whose observed accuracy is more than
    ``max_drop`` below ``acc_ref`` (theta_T's), a hard budget shared by every layer and stage."""
    candidates = torch.unique(act[(act >= 0) & (act <= k_cap)])
    k, n, curve = None, 0, []
    for v in candidates.tolist():
        n_v = int(flip_mask(act, v).sum())
        correct = correct_of(n_v)
        acc = int(correct.sum()) / correct.numel()
        curve.append((v, acc, n_v))
        if paired_drop_bound(before, correct, z)[1] > tolerance + 1e-12:
            return k, n, True, curve
        if cap is not None and cap[0] - acc > cap[1] + 1e-12:
            return k, n, True, curve
        k, n = v, n_v
    return k, n, False, curve


def _exact(act, acc_of, acc0, k_init, k_step, k_cap, tolerance):
    candidates = torch.unique(act[(act >= 0) & (act <= k_cap)])  # sorted ascending
    k, n, curve = None, 0, []
    for v in candidates.tolist():
        n_v = int(flip_mask(act, v).sum())
        acc = acc_of(n_v)
        curve.append((v, acc, n_v))
        if acc0 - acc > tolerance + 1e-12:
            return k, n, True, curve
        k, n = v, n_v
    return k, n, False, curve


def _reference(act, acc_of, acc0, k_init, k_step, k_cap, tolerance):
    ks, k = [], k_init
    while k <= k_cap:  # the scripts' float accumulation, reproduced step by step
        ks.append(k)
        k += k_step
    eligible = torch.sort(act[act >= 0]).values
    counts = torch.searchsorted(eligible, torch.tensor(ks, dtype=act.dtype, device=act.device),
                             right=True)
    curve, last = [], -1
    for k, n_k in zip(ks, counts.tolist()):
        acc = acc_of(n_k)
        if n_k != last:
            curve.append((k, acc, n_k))
            last = n_k
        if tolerance <= acc0 - acc:
            if curve[-1][0] != k:
                curve.append((k, acc, n_k))
            return k, n_k, True, curve
    return (ks[-1], int(counts[-1]), False, curve) if ks else (None, 0, False, curve)


def check_config(layers: Sequence[str], mode: str, k_init: float, k_step: float, k_cap: float,
                 tolerance: float, batch_size: int, stop: str = "drop",
                 confidence: float = 0.95, rank: str = "activation", rank_eps: float = 0.01,
                 max_drop: Optional[float] = None, tolerance_unit: str = "accuracy") -> None:
    """Raises ValueError naming the first invalid FLAIN setting."""
    if isinstance(layers, str) or len(layers) == 0 or len(set(layers)) != len(layers):
        raise ValueError(f"flain.layers must be a non-empty list of distinct module names, "
                         f"got {layers!r}")
    if mode not in MODES:
        raise ValueError(f"flain.mode must be one of {list(MODES)}, got {mode!r}")
    if not (k_step > 0 and 0 <= k_init <= k_cap):
        raise ValueError(f"flain needs k_step > 0 and 0 <= k_init <= k_cap, got k_init={k_init}, "
                         f"k_step={k_step}, k_cap={k_cap}")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"flain.tolerance must be in [0, 1], got {tolerance}")
    if batch_size < 1:
        raise ValueError(f"flain.batch_size must be >= 1, got {batch_size}")
    if stop not in STOPS:
        raise ValueError(f"flain.stop must be one of {list(STOPS)}, got {stop!r}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"flain.confidence must be in [0.5, 1), got {confidence}")
    if rank not in RANKS:
        raise ValueError(f"flain.rank must be one of {list(RANKS)}, got {rank!r}")
    if rank != "activation" and mode != "exact":
        raise ValueError(f"flain.rank={rank!r} needs mode='exact' (the reference grid of k is "
                         f"an activation threshold), got mode={mode!r}")
    eps_list = list(rank_eps) if isinstance(rank_eps, (list, tuple)) else [rank_eps]
    if not eps_list or not all(isinstance(e, (int, float)) and e > 0 for e in eps_list):
        raise ValueError(f"flain.rank_eps must be > 0 (or a non-empty list of such values, one "
                         f"stage each), got {rank_eps}")
    if max_drop is not None and not (0 <= max_drop <= 1 and stop == "confident" and mode == "exact"):
        raise ValueError(f"flain.max_drop must be null or in [0, 1] with mode='exact' and "
                         f"stop='confident', got max_drop={max_drop}, mode={mode!r}, stop={stop!r}")
    if tolerance_unit not in TOLERANCE_UNITS:
        raise ValueError(f"flain.tolerance_unit must be one of {list(TOLERANCE_UNITS)}, got {tolerance_unit!r}")
    if tolerance_unit != "accuracy" and mode != "exact":
        raise ValueError(f"flain.tolerance_unit={tolerance_unit!r} needs mode='exact' (reference is the "
                         f"authors' rule), got mode={mode!r}")
    if len(eps_list) > 1 and rank != "update_ratio":
        raise ValueError(f"flain.rank_eps as a list (stages) needs rank='update_ratio', got rank={rank!r}")


def flain_repair(model: nn.Module, layout: ParamLayout, theta0: Tensor, theta_t: Tensor,
                 aux_x: Tensor, aux_y: Tensor, layers: Sequence[str] = ("fc1",),
                 mode: str = "exact", k_init: float = 0.001, k_step: float = 0.0001,
                 k_cap: float = 1.0, tolerance: float = 0.001, rescale: bool = True,
                 batch_size: int = 512, triggered_x: Optional[Tensor] = None,
                 stop: str = "drop", confidence: float = 0.95, rank: str = "activation",
                 rank_eps: float | Sequence[float] = 0.01, max_drop: Optional[float] = None,
                 tolerance_unit: str = "accuracy") -> tuple[Tensor, list[ThresholdResult]]:
    """Repairs ``theta_t`` with FLAIN; returns (repaired vector ``[numel]``, one result per
    layer). ``aux_x`` (and ``triggered_x``, only used to report activations on triggered inputs)
    must already be normalised; ``model`` is a scratch model (its parameters are overwritten).
    ``rank="update_ratio"`` (exact mode only) orders the neurons by ``update_ratio_order``
    instead of by activation; ``k`` is then the fraction of eligible neurons flipped.
    ``rank_eps`` as a list makes one *stage* per value on every layer, in order: each stage
    ranks the neurons the earlier stages left unflipped with its own ``eps`` and searches
    against the accuracy of the model the earlier stage returned (each stage has its own
    tolerance, so the total drop is bounded by the stages' sum); stage i > 1 is reported as
    layer ``<name>#i``. ``max_drop`` (stop="confident" only) also stops every layer's and stage's
    search where the aux accuracy falls more than ``max_drop`` below theta_T's: one budget for
    all of them. ``tolerance_unit="error"`` scales ``tolerance`` by theta_T's aux error (every
    layer and stage alike; the module docstring)."""
    check_config(layers, mode, k_init, k_step, k_cap, tolerance, batch_size, stop, confidence,
                 rank, rank_eps, max_drop, tolerance_unit)
    if aux_x.shape[0] == 0:
        raise ValueError("flain: aux_x (simulation.data.aux) is empty; FLAIN needs clean "
                         "auxiliary samples")
    specs = [resolve_layer(model, name) for name in layers]
    stages = list(rank_eps) if isinstance(rank_eps, (list, tuple)) else [rank_eps]
    vec, results, before, acc_ref = theta_t.clone(), [], None, None
    for spec in specs:
        res, before = _repair_layer(model, layout, spec, theta0, vec, aux_x, aux_y, mode, k_init,
                                    k_step, k_cap, tolerance, rescale, batch_size, before,
                                    triggered_x, stop, confidence, rank, stages[0],
                                    max_drop=max_drop, acc_ref=acc_ref, tolerance_unit=tolerance_unit)
        acc_ref = int(before.sum()) / before.numel()  # theta_T's: the budget's reference
        results.append(res)
        done = flip_mask(res.order, res.k)  # this layer's neurons flipped so far
        for i, eps in enumerate(stages[1:], start=2):
            res, _ = _repair_layer(model, layout, spec, theta0, vec, aux_x, aux_y, mode, k_init,
                                   k_step, k_cap, tolerance, rescale, batch_size, None,
                                   triggered_x, stop, confidence, rank, eps, exclude=done,
                                   max_drop=max_drop, acc_ref=acc_ref, tolerance_unit=tolerance_unit)
            res.layer, res.stage = f"{spec.name}#{i}", i
            results.append(res)
            done = done | flip_mask(res.order, res.k)
    return vec, results


def _repair_layer(model, layout, spec: LayerSpec, theta0, vec, aux_x, aux_y, mode, k_init,
                  k_step, k_cap, tolerance, rescale, batch_size, before, triggered_x, stop,
                  confidence, rank="activation", rank_eps=0.01, exclude: Optional[Tensor] = None,
                  max_drop: Optional[float] = None, acc_ref: Optional[float] = None,
                  tolerance_unit: str = "accuracy") -> tuple[ThresholdResult, Tensor]:
    """Searches and writes one layer's repaired weights into ``vec`` (in place). ``before`` is
    theta_T's per-input aux correctness (None for the first layer: measured here); returned."""
    layout.load(model, vec)
    w_name, b_name = f"{spec.name}.weight", f"{spec.name}.bias"
    w0 = layout.view(theta0, w_name)
    delta = layout.view(vec, w_name) - w0
    bias = layout.view(vec, b_name) if b_name in layout else None
    ev = FlipEvaluator(NetworkSplit(model, spec), aux_x, aux_y, w0, delta, bias, batch_size)
    activations = ev.act
    if rank == "update_ratio":  # the search and the flips follow the score's order
        # neurons an earlier stage flipped are out of this stage's ranking (never flipped back)
        ev.act = update_ratio_order(activations if exclude is None else
                                    activations.masked_fill(exclude, -1.0), delta, rank_eps)
    search_rescale = rescale and mode == "exact"
    if before is None:
        before = ev.correct(flip_mask(ev.act, None), False)
    acc_before = int(before.sum()) / before.numel()
    if tolerance_unit == "error":  # a fraction of theta_T's aux error (acc_ref: theta_T's, once known)
        tolerance = tolerance * (1 - (acc_before if acc_ref is None else acc_ref))
    res = search_threshold(ev.act, lambda m: ev.accuracy(m, search_rescale), mode=mode,
                           k_init=k_init, k_step=k_step, k_cap=k_cap, tolerance=tolerance,
                           acc_before=acc_before, stop=stop,
                           confidence=confidence,
                           aux_correct=lambda m: ev.correct(m, search_rescale),
                           correct_before=before, max_drop=max_drop, acc_ref=acc_ref)
    mask = flip_mask(ev.act, res.k)
    res.rescaled = rescale and (mode == "exact" or res.tolerance_reached)
    res.aux_acc_after = ev.accuracy(mask, res.rescaled)  # also moves ev to this mask
    w = flip_columns(w0, delta, ev.act, res.k)
    layout.view(vec, w_name).copy_(w * ev.scale() if res.rescaled else w)
    res.layer, res.fast_path, res.activations = spec.name, ev.split.fast, activations
    res.rank, res.order = rank, ev.act
    if triggered_x is not None and triggered_x.shape[0] > 0:  # model still holds the input vec
        res.activations_triggered = spec.mean_activation(
            ev.split.capture(triggered_x, batch_size).x)
    return res, before
