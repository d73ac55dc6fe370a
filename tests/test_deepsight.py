"""DeepSight (Rieger et al., NDSS 2022): hand-computed NEUPs, threshold exceedings, DDifs and
cluster rules, crafted backdoor updates, determinism, and one tiny run through the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.aggregators import DeepSight, RoundContext, ServerContext
from fedsim.aggregators.deepsight import (
    accept_clusters,
    cluster_distances,
    ddifs,
    neups,
    singleton_ids,
    suspicious_labels,
    threshold_exceedings,
)
from fedsim.aggregators.functional import clip_to_norm
from fedsim.cli import main
from fedsim.models import TinyNet
from fedsim.params import ParamLayout

from conftest import TINY

T = torch.tensor


# ----------------------------------------------------------------- NEUPs and threshold exceedings
def test_neups_and_threshold_exceedings_by_hand():
    # energies e_p = |db_p| + sum_q |dW_pq|: (0 + 1 + 1, 2 + 0 + 0, 0.5 + 0.5 + 0) = (2, 2, 1)
    dw = T([[[1.0, -1.0], [0.0, 0.0], [0.5, 0.0]]])
    db = T([[0.0, -2.0, 0.5]])
    neup = neups(dw, db)
    assert torch.allclose(neup, T([[4 / 9, 4 / 9, 1 / 9]], dtype=torch.float64))
    # P = 3: xi = max(0.01, 1/3) * 4/9 = 4/27 ~ 0.148; 1/9 ~ 0.111 is below, so TE = 2
    assert threshold_exceedings(neup).tolist() == [2]
    # a factor above 1/P decides: 0.3 * 4/9 = 0.133 > 1/9 still; 0.2 * 4/9 = 0.089 < 1/9
    assert threshold_exceedings(neup, factor=0.2).tolist() == [2]
    assert threshold_exceedings(T([[0.5, 0.3, 0.2]], dtype=torch.float64), factor=0.2).tolist() == [3]


def test_a_neup_equal_to_the_threshold_does_not_exceed_it():
    # P = 4: xi = max(0.01, 1/4) * 0.8 = 0.2 exactly; 0.2 is not above it
    assert threshold_exceedings(T([[0.8, 0.2, 0.0, 0.0]], dtype=torch.float64)).tolist() == [1]


def test_threshold_factor_floor_of_one_percent_applies_with_many_classes():
    # P = 200: 1/P = 0.005 < 0.01, so xi = 0.01 * max; a NEUP of 0.008 * max is not counted
    neup = torch.full((1, 200), 0.008, dtype=torch.float64)
    neup[0, 0], neup[0, 1] = 1.0, 0.011
    assert threshold_exceedings(neup).tolist() == [2]  # 1.0 and 0.011 exceed 0.01; 0.008 does not


def test_an_output_layer_without_update_energy_has_uniform_neups_and_is_not_suspicious():
    neup = neups(torch.zeros(2, 4, 3), torch.zeros(2, 4))
    assert torch.equal(neup, torch.full((2, 4), 0.25, dtype=torch.float64))
    assert threshold_exceedings(neup).tolist() == [4, 4]


def test_suspicious_labels_are_te_at_most_half_the_median():
    # median of (4, 8, 8, 8, 3, 9) is 8: boundary 4, so 4 (equal) and 3 are suspicious
    assert suspicious_labels(T([4, 8, 8, 8, 3, 9])).tolist() == [True, False, False, False, True, False]
    # even count: median (5 + 9) / 2 = 7, boundary 3.5
    assert suspicious_labels(T([3, 5, 9, 10])).tolist() == [True, False, False, False]


# ----------------------------------------------------------------- DDifs on a tiny linear model
def _linear_forward(weights, x):
    """logits = x @ W.T + b for 2 classes and 1 input feature: weights = (w0, w1, b0, b1)."""
    w, b = weights[:2].view(2, 1), weights[2:]
    return x.view(len(x), 1) @ w.T + b


def test_ddifs_are_mean_softmax_ratios_by_hand():
    g = torch.zeros(4)  # global: uniform probabilities 0.5 / 0.5 on every input
    updates = torch.stack([T([math.log(3.0), 0.0, 0.0, 0.0]),  # x = 1: p = (0.75, 0.25); x = 0: (0.5, 0.5)
                           T([0.0, 0.0, math.log(3.0), 0.0])])  # p = (0.75, 0.25) on every input
    x = T([0.0, 1.0])
    out = ddifs(_linear_forward, g, updates, x, batch_size=1)
    # client 0: mean of ratios (1, 1) and (1.5, 0.5) = (1.25, 0.75); client 1: (1.5, 0.5)
    assert torch.allclose(out, T([[1.25, 0.75], [1.5, 0.5]], dtype=torch.float64))
    # the global model against itself: ratio 1 everywhere
    assert torch.allclose(ddifs(_linear_forward, g, torch.zeros(1, 4), x, 2), torch.ones(1, 2, dtype=torch.float64))


# ----------------------------------------------------------------- cluster rules
def test_cluster_distances_make_every_outlier_its_own_cluster():
    d = cluster_distances(np.array([0, 0, -1, 1, -1]))
    expect = T([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 1, 0]],
               dtype=torch.float64)
    assert torch.equal(d, expect)
    assert singleton_ids(np.array([0, 0, -1, 1, -1])).tolist() == [0, 0, 2, 1, 3]
    assert singleton_ids(np.array([-1, -1])).tolist() == [0, 1]


def test_clusters_are_accepted_only_below_tau_suspicious():
    clusters = T([0, 0, 0, 1, 1, 1, 1, 2, 3])
    suspicious = T([True, False, False, True, False, False, False, True, False])
    # cluster 0: 1/3 suspicious, not < 1/3 -> rejected; cluster 1: 1/4 -> accepted;
    # singleton 2: suspicious -> rejected; singleton 3: clean -> accepted
    accepted = accept_clusters(clusters, suspicious, 1 / 3)
    assert accepted.tolist() == [False] * 3 + [True] * 4 + [False, True]
    assert accept_clusters(clusters, suspicious, 0.34)[:3].all()


# ----------------------------------------------------------------- the rule on crafted updates
def _tiny_setup(num_samples=64, seed=0, **kwargs):
    torch.manual_seed(0)
    model = TinyNet(num_classes=10, in_features=16, hidden=8)
    layout = ParamLayout(model)

    def forward(weights, x):
        layout.load(model, weights)
        with torch.no_grad():
            return model.eval()(x)

    agg = DeepSight(num_samples=num_samples, batch_size=32, **kwargs)
    agg.connect(ServerContext(layout, torch.device("cpu"), 20, seed, forward=forward, input_shape=(1, 4, 4),
                              num_classes=10))
    return agg, layout, layout.flatten(model)


def _crafted_updates(layout, n_honest=7, n_backdoor=3, backdoor_scale=1.0):
    """Honest updates spread over every output neuron; backdoor updates whose output layer moves
    almost only neuron 5 (the target class)."""
    gen = torch.Generator().manual_seed(1)
    n = n_honest + n_backdoor
    updates = 0.01 * torch.randn(n, layout.num_weights, generator=gen)
    for i in range(n_honest, n):
        w, b = layout.view(updates[i], "fc2.weight"), layout.view(updates[i], "fc2.bias")
        w.mul_(0.01)
        b.mul_(0.01)
        w[5] += 0.05
        b[5] += 0.05
        updates[i] *= backdoor_scale
    return updates


def _round(agg, updates, g, r=0):
    n = updates.shape[0]
    ctx = RoundContext(r, g, torch.arange(n), torch.Generator().manual_seed(0))
    return agg.aggregate(updates, torch.ones(n), ctx)


@pytest.mark.parametrize("min_cluster_size", [5, 2])
def test_backdoor_updates_on_one_output_neuron_are_rejected_and_the_rest_clipped_and_averaged(min_cluster_size):
    agg, layout, g = _tiny_setup(min_cluster_size=min_cluster_size)
    updates = _crafted_updates(layout, backdoor_scale=20.0)  # also far larger than the honest norms
    res = _round(agg, updates, g)
    # the backdoor models have TE = 1 (one output neuron), the honest ones ~10: suspicious = backdoor
    assert res.metrics["suspicious"] == 3
    assert res.accepted.tolist() == [True] * 7 + [False] * 3
    # the update is the equal-weight mean of the accepted updates clipped to the median norm of
    # all 10 (numpy's median: n is even, the mean of the middle two)
    norms = torch.linalg.vector_norm(updates, dim=1).sort().values
    bound = (norms[4] + norms[5]) / 2
    assert res.metrics["clip_bound"] == pytest.approx(float(bound))
    assert torch.allclose(res.update, clip_to_norm(updates[:7], bound)[0].mean(0))
    assert res.metrics["none_accepted"] == 0


def test_without_a_benign_majority_the_labels_flag_nobody():
    # 4 honest, 6 backdoor models: the TE median is 1, the boundary 0.5: nobody is suspicious and
    # every model is accepted (the paper's labelling assumes most models are benign)
    agg, layout, g = _tiny_setup(min_cluster_size=2)
    res = _round(agg, _crafted_updates(layout, n_honest=4, n_backdoor=6), g)
    assert res.metrics["suspicious"] == 0
    assert res.metrics["te_min"] == 1 and res.metrics["te_median"] == 1.0
    assert res.accepted.all()


def _pairs(layout, k=5):
    """k pairs of models that differ only in the output bias; pair j puts energy 1 on neuron j
    and ~0.316 on the rest. The two members are nearly identical (one cluster in every view) but
    their other NEUPs are 0.101 resp. 0.099 of the maximum: TE 10 resp. 1 (xi = 0.1 max)."""
    updates = torch.zeros(2 * k, layout.num_weights)
    for j in range(k):
        for m, ratio in enumerate((0.101, 0.099)):
            b = torch.full((10,), math.sqrt(ratio))
            b[j] = 1.0
            layout.view(updates[2 * j + m], "fc2.bias").copy_(b)
    return updates


def test_clusters_with_a_third_or_more_suspicious_members_are_rejected_whole():
    agg, layout, g = _tiny_setup(min_cluster_size=2)
    updates = _pairs(layout)
    res = _round(agg, updates, g)
    # TE = (10, 1) per pair: median 5.5, boundary 2.75: one suspicious member in each pair
    assert res.metrics["suspicious"] == 5
    assert res.metrics["te_min"] == 1 and res.metrics["te_median"] == 5.5
    assert res.metrics["clusters"] == 5 and res.metrics["outliers"] == 0
    # every cluster is half suspicious (>= 1/3): nothing is accepted, the update is zero
    assert not res.accepted.any()
    assert res.metrics["none_accepted"] == 1
    assert torch.equal(res.update, torch.zeros(layout.num_weights))
    # with tau above 1/2 every pair is accepted
    agg.tau = 0.6
    assert _round(agg, updates, g).accepted.all()


# ----------------------------------------------------------------- determinism and seeding
def test_same_round_gives_the_same_result_whatever_the_global_rng():
    agg, layout, g = _tiny_setup(min_cluster_size=2)
    updates = _crafted_updates(layout)
    torch.manual_seed(123)
    first = _round(agg, updates, g, r=3)
    torch.manual_seed(456)
    torch.rand(10)
    second = _round(agg, updates, g, r=3)
    assert torch.equal(first.update, second.update)
    assert torch.equal(first.accepted, second.accepted)
    assert first.metrics == second.metrics


def test_noise_inputs_depend_on_seed_round_and_batch_only():
    agg, _, _ = _tiny_setup(num_samples=8)
    x = agg.noise(0, 3, 1)
    assert x.shape == (8, 1, 4, 4) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, agg.noise(0, 3, 1))
    assert not torch.equal(x, agg.noise(0, 4, 1))
    assert not torch.equal(x, agg.noise(0, 3, 2))
    assert not torch.equal(x, agg.noise(1, 3, 1))


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"tau": 2.0}, r"aggregator.tau must be in \(0, 1\], got 2.0"),
    ({"tau": 0.0}, r"aggregator.tau"),
    ({"num_seeds": 0}, r"aggregator.num_seeds must be an integer >= 1, got 0"),
    ({"num_samples": 0}, r"aggregator.num_samples"),
    ({"batch_size": 0}, r"aggregator.batch_size"),
    ({"threshold_factor": 1.0}, r"aggregator.threshold_factor must be in \[0, 1\)"),
    ({"min_cluster_size": 1}, r"aggregator.min_cluster_size must be an integer >= 2, got 1"),
    ({"min_samples": 0}, r"aggregator.min_samples"),
])
def test_constructor_rejects_bad_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepSight(**kwargs)


def test_connect_needs_a_forward_pass_and_an_output_layer():
    layout = ParamLayout(TinyNet(num_classes=10, in_features=16, hidden=8))
    with pytest.raises(ValueError, match="DeepSight needs ServerContext.forward"):
        DeepSight().connect(ServerContext(layout, torch.device("cpu"), 10, 0))
    full = dict(forward=lambda w, x: x, input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"weight \[7, q\] and bias \[7\]; no module has them"):
        DeepSight().connect(ServerContext(layout, torch.device("cpu"), 10, 0, num_classes=7, **full))
    with pytest.raises(ValueError, match="aggregator.output_layer='fc1' does not name one"):
        DeepSight(output_layer="fc1").connect(ServerContext(layout, torch.device("cpu"), 10, 0, num_classes=10, **full))
    agg = DeepSight(output_layer="fc2")
    agg.connect(ServerContext(layout, torch.device("cpu"), 10, 0, num_classes=10, **full))
    assert (agg.weight_entry.name, agg.bias_entry.name) == ("fc2.weight", "fc2.bias")


def test_bad_value_on_the_command_line_fails_before_training(tiny_args):
    with pytest.raises(ValueError, match=r"aggregator.tau must be in \(0, 1\], got 2.0"):
        main(tiny_args + ["--aggregator", "fedsim.aggregators.DeepSight", "--aggregator.init_args.tau", "2.0"])


# ----------------------------------------------------------------- end to end
def test_deepsight_trains_through_the_cli_and_reports_what_it_accepted(tmp_path):
    run = tmp_path / "run"
    summary = main(["--config", str(TINY), "--config", str(TINY.parent / "badnets.yaml"), "--callbacks", "null",
                    "--run_dir", str(run), "--aggregator", "fedsim.aggregators.DeepSight",
                    "--aggregator.init_args.num_samples", "64", "--aggregator.init_args.min_cluster_size", "2"])
    assert summary["rounds"] == 3 and 0 <= summary["trained"]["acc"] <= 1
    params = torch.load(run / "final_model.pt", weights_only=True)["params"]
    assert torch.isfinite(params).all()
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    assert len(rows) == 3
    for r in rows:
        assert 0 <= int(r["detect/accepted"]) <= 5
        assert {"detect/fpr", "suspicious", "clusters", "outliers", "clip_bound"} <= set(r)
    records = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    records = [r for r in records if "accepted" in r]
    assert len(records) == 3
    assert all(len(r["accepted"]) == int(row["detect/accepted"]) for r, row in zip(records, rows))


@pytest.mark.parametrize("n", [1, 3, 7])
def test_identical_updates_come_back_unchanged_and_a_huge_one_stays_bounded(n):
    agg, layout, g = _tiny_setup()
    same = (0.01 * torch.randn(1, layout.num_weights, generator=torch.Generator().manual_seed(2))).repeat(n, 1)
    res = _round(agg, same, g)
    assert res.accepted.all() and torch.allclose(res.update, same[0])
    updates = 0.01 * torch.randn(n, layout.num_weights, generator=torch.Generator().manual_seed(3))
    updates[0] *= 1e6
    bound = torch.linalg.vector_norm(updates, dim=1).double().quantile(0.5)
    assert float(torch.linalg.vector_norm(_round(agg, updates, g).update)) <= float(bound) * (1 + 1e-6)
