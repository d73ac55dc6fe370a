"""Aggregation rules as pure tensor functions: ``updates[n, d]``, ``weights[n]`` -> ``[d]``.

Rows are client updates (client weights - global weights), ``weights`` are sample counts. The
rules with longer logic (FLTrust, FoolsGold, FLAME, Multi-Metrics) keep their pure function in
their own module; the papers are cited in the module of each class.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def weighted_mean(updates: Tensor, weights: Tensor) -> Tensor:
    """Sum_i w_i u_i / sum_i w_i. Rows are summed in order, so the result does not depend on
    how many processes trained them."""
    w = weights.to(updates.dtype)
    return (w[:, None] * updates).sum(0) / w.sum()


def drop_nonfinite(updates: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Removes clients whose update or weight holds NaN/inf (a diverged or hostile client).

    Returns:
        ``(updates[keep], weights[keep], keep)`` with ``keep: Tensor[n]`` bool.
    """
    keep = torch.isfinite(updates).all(dim=1) & torch.isfinite(weights)
    return updates[keep], weights[keep], keep


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """``[n, n]`` float64 squared Euclidean distances, computed from differences (no
    cancellation, unlike the ``|a|^2 + |b|^2 - 2ab`` shortcut)."""
    dist = torch.cdist(updates, updates, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.double() ** 2


def gram64(rows: Tensor, shift: Optional[Tensor] = None, chunk: int = 1 << 20) -> Tensor:
    """``[n, n]`` float64 Gram matrix of the rows ``shift + rows[i]`` (``shift``: ``[d]`` or None).

    Rules that compare whole models (global weights + update) need float64: the models differ
    by ~1e-4 of their norm, below float32 resolution. Columns are summed in chunks so the float64
    copy never exceeds ``n * chunk`` values.
    """
    n, d = rows.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    for start in range(0, d, chunk):
        block = rows[:, start : start + chunk].double()
        if shift is not None:
            block = block + shift[start : start + chunk].to(block)
        gram += block @ block.T
    return 0.5 * (gram + gram.T)  # matmul is not exactly symmetric


def cosine_distances_from_gram(gram: Tensor) -> Tensor:
    """``[n, n]`` matrix of ``1 - cos`` from a Gram matrix, clamped to >= 0, zero diagonal.
    Zero rows are treated as having cosine 0 with everything."""
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    dist = (1.0 - gram / (norms[:, None] * norms[None, :]).clamp_min(1e-300)).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def krum_scores(sq_dist: Tensor, f: int) -> Tensor:
    """Krum score of every row: the sum of its ``n - f - 2`` smallest squared distances to the
    other rows (Blanchard et al. 2017). ``sq_dist`` is ``[n, n]`` with a zero diagonal.
    Bulyan runs Krum on sets as small as ``2f + 1``; there at least one neighbour counts."""
    n = sq_dist.shape[0]
    k = min(max(n - f - 2, 1), n - 1)
    # Sorting a row puts its own zero distance first; skip it and keep the next k.
    return sq_dist.sort(dim=1).values[:, 1 : 1 + k].sum(dim=1)


def multi_krum_select(updates: Tensor, f: int, m: int) -> Tensor:
    """Indices of the ``m`` rows with the lowest Krum scores, best first (ties: lower index)."""
    scores = krum_scores(pairwise_sq_distances(updates), f)
    return torch.sort(scores, stable=True).indices[:m]


def median(updates: Tensor) -> Tensor:
    """Coordinate-wise median; for even ``n`` the mean of the two middle values (as numpy).
    Ignores sample weights (Yin et al. 2018)."""
    n = updates.shape[0]
    s = updates.sort(dim=0).values
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def trimmed_mean(updates: Tensor, k: int) -> Tensor:
    """Coordinate-wise mean after removing the ``k`` largest and ``k`` smallest values of each
    coordinate (Yin et al. 2018). Ignores sample weights."""
    n = updates.shape[0]
    return updates.sort(dim=0).values[k : n - k].mean(dim=0)


def geometric_median(
    updates: Tensor, weights: Tensor, max_iter: int = 100, nu: float = 1e-6, tol: float = 1e-6
) -> tuple[Tensor, int]:
    """Weighted geometric median by the smoothed Weiszfeld algorithm (Pillutla et al., RFA).

    Minimises ``sum_i a_i max(nu, ||z - u_i||)`` with ``a_i`` the normalised sample weights.
    Starts at the weighted mean and stops when the objective improves by less than
    ``tol * objective``.

    Returns:
        the median ``[d]`` and the number of Weiszfeld steps taken.
    """
    u = updates.double()
    a = weights.double() / weights.double().sum()
    z = weighted_mean(u, a)
    objective = (a * torch.linalg.vector_norm(u - z, dim=1).clamp_min(nu)).sum()
    steps = 0
    for steps in range(1, max_iter + 1):
        beta = a / torch.linalg.vector_norm(u - z, dim=1).clamp_min(nu)
        z = weighted_mean(u, beta)
        new_objective = (a * torch.linalg.vector_norm(u - z, dim=1).clamp_min(nu)).sum()
        converged = objective - new_objective <= tol * new_objective
        objective = new_objective
        if converged:
            break
    return z.to(updates.dtype), steps


def bulyan_select(updates: Tensor, f: int) -> Tensor:
    """Bulyan's selection set: ``n - 2f`` indices, each chosen by Krum on the rows not chosen
    yet (El Mhamdi et al. 2018)."""
    n = updates.shape[0]
    sq_dist = pairwise_sq_distances(updates)
    remaining = list(range(n))
    selected: list[int] = []
    for _ in range(n - 2 * f):
        idx = torch.tensor(remaining, device=updates.device)
        scores = krum_scores(sq_dist[idx][:, idx], f)
        best = remaining[int(torch.argmin(scores))]
        selected.append(best)
        remaining.remove(best)
    return torch.tensor(sorted(selected), device=updates.device)


def bulyan(updates: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """Bulyan: Krum-based selection of ``theta = n - 2f`` updates, then per coordinate the mean
    of the ``theta - 2f`` values closest to the coordinate-wise median. Ignores sample weights.

    Returns:
        the update ``[d]`` and the selected indices.
    """
    idx = bulyan_select(updates, f)
    chosen = updates[idx]  # [theta, d]
    return mean_around_median(chosen, chosen.shape[0] - 2 * f), idx


def mean_around_median(updates: Tensor, beta: int) -> Tensor:
    """Per coordinate, the mean of the ``beta`` values closest to the coordinate-wise median."""
    closest = (updates - median(updates)).abs().topk(beta, dim=0, largest=False).indices
    return updates.gather(0, closest).mean(dim=0)  # gather: [beta, d]


def clip_to_norm(updates: Tensor, max_norm: Tensor | float) -> tuple[Tensor, Tensor]:
    """Scales each row down to L2 norm at most ``max_norm``; rows already inside are untouched.

    Returns:
        the clipped rows and their original norms ``[n]``.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    return updates * scale[:, None].to(updates.dtype), norms


def gaussian_noise(like: Tensor, std: float, generator: Optional[torch.Generator]) -> Tensor:
    """``N(0, std^2)`` noise shaped like ``like``, drawn on the generator's device."""
    if std == 0:
        return torch.zeros_like(like)
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float64)
    return (std * noise).to(like)


def rlr_learning_rates(updates: Tensor, threshold: int, server_lr: float = 1.0) -> Tensor:
    """Robust learning rate (Ozdayi et al. 2021): per coordinate ``+server_lr`` where at least
    ``threshold`` clients agree on the sign (``|sum_i sign(u_i)| >= threshold``), else
    ``-server_lr``. Returns ``[d]``."""
    agreement = torch.sign(updates).sum(dim=0).abs()
    positive = torch.full_like(agreement, server_lr)
    return torch.where(agreement >= threshold, positive, -positive)
