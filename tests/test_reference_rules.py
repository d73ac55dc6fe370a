"""FoolsGold, FLAME and Multi-Metrics by default compute what their reference defines.

Each expectation is worked out by hand or by a few lines of numpy that transcribe the reference
(named in each test); none calls the code under test to get it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.aggregators import FLAME, FoolsGold, MultiMetrics, RoundContext


def ctx(global_weights, client_ids=None):
    ids = torch.arange(5) if client_ids is None else torch.as_tensor(client_ids)
    return RoundContext(0, torch.as_tensor(global_weights, dtype=torch.float32), ids, torch.Generator())


def f32(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------ FoolsGold


def foolsgold_reference_round(deltas, summed):
    """One round of DistributedML/FoolsGold ML/code/ML_main.py + model_aggregator.foolsgold."""
    norms = np.linalg.norm(deltas, axis=1, keepdims=True)
    deltas = np.where(norms > 1, deltas / norms, deltas)
    summed = summed + deltas
    unit = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    cs = unit @ unit.T - np.eye(len(deltas))
    top = cs.max(axis=1)
    for i in range(len(deltas)):
        for j in range(len(deltas)):
            if i != j and top[i] < top[j]:
                cs[i, j] *= top[i] / top[j]
    wv = np.clip(1 - cs.max(axis=1), 0, 1)
    wv = wv / wv.max()
    wv[wv == 1] = 0.99
    wv = np.clip(np.log(wv / (1 - wv)) + 0.5, 0, 1)
    return deltas.T @ wv, summed


def test_foolsgold_default_scales_updates_to_unit_norm_and_sums():
    # Prepare: two rounds of the same three clients; every row but one is longer than 1
    round1 = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.5, 0.5 * math.sqrt(3)]])
    round2 = np.array([[1.5, 1.5, 1.5], [2.0, 2.0, 0.0], [0.0, 0.0, 1.5]])
    agg = FoolsGold()
    ids = [4, 7, 9]
    # Execute
    first = agg.aggregate(f32(round1), torch.tensor([1.0, 50.0, 1.0]), ctx(np.zeros(3), ids))
    second = agg.aggregate(f32(round2), torch.tensor([1.0, 50.0, 1.0]), ctx(np.zeros(3), ids))
    # Assert, round 1 by hand: rows scaled to e_x, e_y, (0, .5, .866); cos(1, 2) = .5, others 0
    # -> a = 1 - max cos = [1, .5, .5] -> logit [ln(99) + .5 -> 1, .5, .5]; sum, not mean
    assert torch.allclose(first.update, f32([1.0, 0.75, 0.25 * math.sqrt(3)]), atol=1e-6)
    # the history holds the scaled rows: (3, 0, 0) -> e_x, then (1.5, 1.5, 1.5) -> (1, 1, 1) / sqrt 3
    r = 1 / math.sqrt(3)
    assert torch.allclose(agg.history[4], f32([1.0 + r, r, r]), atol=1e-6)
    # Round 2 against the transcription, which carries the scaled history over
    expected1, summed = foolsgold_reference_round(round1, np.zeros((3, 3)))
    expected2, summed = foolsgold_reference_round(round2, summed)
    assert torch.allclose(first.update, f32(expected1), atol=1e-6)
    assert torch.allclose(second.update, f32(expected2), atol=1e-6)
    assert torch.allclose(agg.history[7], f32(summed[1]), atol=1e-6)


# ------------------------------------------------------------------ FLAME


def test_flame_default_clusters_models_and_averages_clipped_updates_equally():
    # Prepare: global weights G = (0, 10). As updates, client 2 points against the others
    # (cosine distance ~2), yet as models G + u its direction is close to theirs:
    # angles of G + u: .018, 0, .011, -.008 rad for clients 0-3 and .278 rad for client 4.
    updates = f32([[0.2, 1.0], [0.0, 1.0], [0.1, -1.0], [-0.1, 2.0], [3.0, 0.5]])
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # ignored: equal weights
    # Execute
    result = FLAME(noise_lambda=0.0).aggregate(updates, weights, ctx([0.0, 10.0]))
    # Assert: clients 0-3 form the majority cluster; client 4 is the outlier
    assert result.accepted.tolist() == [True, True, True, True, False]
    # S = median of all five norms (1.0198, 1, 1.005, 2.0025, 3.0414) = sqrt(1.04); over the
    # admitted four it would be (1.005 + 1.0198) / 2. Only client 3 is clipped, by S / sqrt(4.01).
    s = math.sqrt(1.04)
    clipped3 = torch.tensor([-0.1, 2.0]) * s / math.sqrt(4.01)
    expected = (updates[0] + updates[1] + updates[2] + clipped3) / 4
    assert result.metrics["clip_bound"] == pytest.approx(s)
    assert torch.allclose(result.update, expected, atol=1e-6)


# ------------------------------------------------------------------ Multi-Metrics


def multi_metrics_reference_scores(updates, global_weights):
    """siquanhuang/Multi-metrics defense.py, Multi_metrics.exec: distances between the models."""
    models = global_weights + updates
    features = np.zeros((len(models), 3))
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            if i != j:
                cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                features[i] += [(1 - cos) ** 2, np.abs(a - b).sum(),
                                abs(np.linalg.norm(a) - np.linalg.norm(b))]
    precision = np.linalg.inv(np.cov(features.T))
    return np.array([x @ precision @ x for x in features])


MM_GLOBAL = np.array([1.0, 2.0, 2.0])
MM_UPDATES = np.array([[0.1, 0.0, 0.2], [0.0, 0.3, 0.1], [0.2, 0.1, 0.0], [-0.1, 0.2, 0.1], [0.9, -0.6, 0.4]])


def test_multi_metrics_default_scores_models_and_keeps_thirty_percent():
    # Prepare
    from fedsim.aggregators.multimetrics import multi_metrics_scores

    weights = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0])
    expected = multi_metrics_reference_scores(MM_UPDATES, MM_GLOBAL)  # lowest: 3, then 1
    # Execute
    scores = multi_metrics_scores(f32(MM_UPDATES), f32(MM_GLOBAL))
    default = MultiMetrics().aggregate(f32(MM_UPDATES), weights, ctx(MM_GLOBAL))
    wider = MultiMetrics(keep=0.4).aggregate(f32(MM_UPDATES), weights, ctx(MM_GLOBAL))
    # Assert: int(0.3 * 5) = 1 client kept; with keep 0.4, two, averaged by sample count
    assert torch.allclose(scores, torch.from_numpy(expected), rtol=1e-5)
    assert default.accepted.tolist() == [False, False, False, True, False]
    assert torch.allclose(default.update, f32(MM_UPDATES[3]))
    assert wider.accepted.tolist() == [False, True, False, True, False]
    assert torch.allclose(wider.update, f32((3 * MM_UPDATES[1] + 2 * MM_UPDATES[3]) / 5), atol=1e-7)


def test_multi_metrics_paper_variant_compares_distances_to_the_global_model():
    # Prepare: the paper's features (authors' project page): per client the L1 and L2 norms of
    # its update and cos(G, G + u_i), then per feature the summed |difference| to the others
    from fedsim.aggregators.multimetrics import multi_metrics_scores

    models = MM_GLOBAL + MM_UPDATES
    cos_to_global = models @ MM_GLOBAL / (np.linalg.norm(models, axis=1) * np.linalg.norm(MM_GLOBAL))
    per_client = np.stack([np.abs(MM_UPDATES).sum(1), np.linalg.norm(MM_UPDATES, axis=1), cos_to_global], 1)
    features = np.abs(per_client[:, None, :] - per_client[None, :, :]).sum(1)
    precision = np.linalg.inv(np.cov(features.T))
    expected = np.array([x @ precision @ x for x in features])
    # Execute
    scores = multi_metrics_scores(f32(MM_UPDATES), f32(MM_GLOBAL), variant="paper")
    # Assert
    assert torch.allclose(scores, torch.from_numpy(expected), rtol=1e-5)
