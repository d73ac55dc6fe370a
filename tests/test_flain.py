"""Tests for FLAIN (flain/): column flips, the two threshold searches, the cached tail, the callback."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedsim.models import MnistCNN
from fedsim.params import ParamLayout
from fedsim.posttrain import PostTrainContext
from flain import (FLAIN, FlipEvaluator, NetworkSplit, flain_repair, flip_columns, flip_mask,
                   resolve_layer, search_threshold)
from flain.functional import paired_drop_bound


class SmallCNN(nn.Module):
    """MnistCNN in miniature (conv, pool, drop1, fc1, drop2, fc2) for 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 4 * 4, 12)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(12, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.drop1(self.pool(self.relu(self.conv1(x))).flatten(1))
        return self.fc2(self.drop2(self.relu(self.fc1(x))))


class SkipNet(nn.Module):
    """fc1 with a residual around it: the tail also reads fc1's input (an fx "extra")."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc0(x.flatten(1)))
        return self.fc2(torch.relu(self.fc1(h)) + h)


def perturbed(model: nn.Module, seed: int, scale: float = 0.3):
    """(layout, theta0, theta_T): theta_T = theta0 + scale * noise; model holds theta_T."""
    layout = ParamLayout(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    theta0 = layout.flatten(model)
    theta_t = theta0 + scale * torch.randn(theta0.shape, generator=g)
    layout.load(model, theta_t)
    return layout, theta0, theta_t


def full_accuracy(model, layout, vec, x, y) -> float:
    layout.load(model, vec)
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).sum().item() / len(y)


def small_setup(seed: int = 0, n: int = 90):
    model = SmallCNN()
    layout, theta0, theta_t = perturbed(model, seed)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed + 2))
    return model, layout, theta0, theta_t, x, y


# ----------------------------------------------------------------------------- flips
def test_flip_columns_flips_exactly_the_low_nonnegative_columns():
    w0 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    delta = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    act = torch.tensor([-0.5, 0.0, 0.3, 0.8])  # negative: never flipped; 0.8 > k
    w = flip_columns(w0, delta, act, 0.3)
    expected = torch.tensor([[1.1, 1.8, 2.7, 4.4], [5.5, 5.4, 6.3, 8.8]])
    assert torch.allclose(w, expected)
    assert torch.equal(flip_columns(w0, delta, act, None), w0 + delta)


def test_flip_columns_conv_flips_input_channels():
    w0 = torch.zeros(2, 3, 1, 1)
    delta = torch.ones(2, 3, 1, 1)
    w = flip_columns(w0, delta, torch.tensor([0.5, 0.1, 2.0]), 0.5)
    assert w[:, :, 0, 0].tolist() == [[-1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]


# ----------------------------------------------------------------------------- searches
def table_acc(accs: list[float]):
    """aux_acc(mask) = accs[number of flipped neurons]."""
    return lambda mask: accs[int(mask.sum())]


def test_exact_keeps_last_k_within_tolerance():
    act = torch.tensor([0.3, 0.1, 0.2, -1.0, 0.4])  # eligible sorted: 0.1, 0.2, 0.3, 0.4
    accs = [0.90, 0.90, 0.895, 0.85, 0.80]  # drop after 1, 2, 3, 4 flips: 0, .005, .05, .1
    res = search_threshold(act, table_acc(accs), mode="exact", tolerance=0.01)
    assert res.k == pytest.approx(0.2) and res.flipped == 2 and res.tolerance_reached
    assert [c[2] for c in res.curve] == [1, 2, 3]  # stops at the first candidate over tolerance
    assert res.aux_acc_search == 0.895 and res.aux_acc_before == 0.90


def test_reference_keeps_first_k_reaching_tolerance():
    act = torch.tensor([0.3, 0.1, 0.2, -1.0, 0.4])
    accs = [0.90, 0.90, 0.895, 0.85, 0.80]
    res = search_threshold(act, table_acc(accs), mode="reference", k_init=0.05, k_step=0.1,
                           k_cap=1.0, tolerance=0.01)
    # grid 0.05 (0 flipped), 0.15 (1), 0.25 (2), 0.35 (3: drop 0.05 >= 0.01) -> stop there
    assert res.k == pytest.approx(0.35) and res.flipped == 3 and res.tolerance_reached


@pytest.mark.parametrize("seed", range(20))
def test_exact_never_picks_a_k_over_tolerance(seed):
    g = torch.Generator().manual_seed(seed)
    act = torch.rand(12, generator=g) - 0.2
    accs = [0.9] + (0.9 - 0.1 * torch.rand(12, generator=g)).tolist()  # [0]: nothing flipped
    res = search_threshold(act, table_acc(accs), mode="exact", tolerance=0.03,
                           acc_before=0.9)
    assert 0.9 - accs[res.flipped] <= 0.03 + 1e-12
    assert res.flipped == int(flip_mask(act, res.k).sum())
    if res.tolerance_reached:  # the next candidate was over the tolerance
        assert 0.9 - res.curve[-1][1] > 0.03


def test_tolerance_never_reached_flips_every_eligible_neuron():
    act = torch.tensor([0.5, -0.2, 0.25, 3.0])  # 3.0 is above k_cap = 1
    res = search_threshold(act, table_acc([0.9] * 5), mode="exact", tolerance=0.0)
    assert (res.k, res.flipped, res.tolerance_reached) == (0.5, 2, False)
    ref = search_threshold(act, table_acc([0.9, 0.9, 0.95, 0.95, 0.95]), mode="reference",
                           k_init=0.1, k_step=0.3, k_cap=1.0, tolerance=0.0)
    # acc never drops below 0.9 -> drop >= 0 holds at k=0.1 already (the MNIST script's quirk)
    assert ref.k == pytest.approx(0.1) and ref.flipped == 0 and ref.tolerance_reached
    ref = search_threshold(act, table_acc([0.9, 0.95, 0.95, 0.95, 0.95]), mode="reference",
                           k_init=0.3, k_step=0.3, k_cap=1.0, tolerance=0.0)
    assert ref.k == pytest.approx(0.9) and ref.flipped == 2 and not ref.tolerance_reached


# ----------------------------------------------------------------------------- cached tail
@pytest.mark.parametrize("make,layer", [(MnistCNN, "fc1"), (SmallCNN, "fc1"), (SmallCNN, "fc2"),
                                        (SmallCNN, "conv1"), (SkipNet, "fc1")])
def test_cached_tail_matches_full_forward(make, layer):
    model = make()
    layout, theta0, theta_t = perturbed(model, seed=3, scale=0.5)
    shape = {MnistCNN: (40, 1, 28, 28), SmallCNN: (60, 1, 8, 8), SkipNet: (60, 10)}[make]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 3  # some wrong labels so accuracies are not all 1
    spec = resolve_layer(model, layer)
    w0, wt = layout.view(theta0, f"{layer}.weight"), layout.view(theta_t, f"{layer}.weight")
    split = NetworkSplit(model, spec)
    assert split.fast  # these models trace with torch.fx
    ev = FlipEvaluator(split, x, y, w0, wt - w0, layout.view(theta_t, f"{layer}.bias"), 16)
    fallback = NetworkSplit(model, spec)
    fallback.fast = False
    ev_slow = FlipEvaluator(fallback, x, y, w0, wt - w0, layout.view(theta_t, f"{layer}.bias"), 16)
    for q in (0.0, 0.3, 0.7, 1.0):
        k = float(torch.quantile(ev.act, q))
        for rescale in (False, True):
            w = flip_columns(w0, wt - w0, ev.act, k)
            vec = theta_t.clone()
            layout.view(vec, f"{layer}.weight").copy_(w * (wt.norm() / w.norm()) if rescale else w)
            expected = full_accuracy(model, layout, vec, x, y)
            mask = flip_mask(ev.act, k)
            assert ev.accuracy(mask, rescale) == expected
            assert ev_slow.accuracy(mask, rescale) == expected
        layout.load(model, theta_t)


def transcribed_reference(model, layout, theta0, theta_t, x, y, k_init, k_step, k_cap, tol):
    """The authors' loop, transcribed naively: hook fc1's input, full forward per k."""
    layout.load(model, theta_t)
    model.eval()
    seen = []
    h = model.fc1.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    acc0 = full_accuracy(model, layout, theta_t, x, y)
    h.remove()
    act = seen[0].sum(0) / x.shape[0]
    w0 = layout.view(theta0, "fc1.weight")
    update = layout.view(theta_t, "fc1.weight") - w0
    norm0 = torch.norm(layout.view(theta_t, "fc1.weight"))
    vec, k = theta_t.clone(), k_init
    while k <= k_cap:
        w = layout.view(vec, "fc1.weight")
        for i in range(act.numel()):
            w[:, i] = w0[:, i] - update[:, i] if 0 <= act[i] <= k else w0[:, i] + update[:, i]
        acc1 = full_accuracy(model, layout, vec, x, y)
        if tol <= acc0 - acc1:
            w *= norm0 / torch.norm(w)
            return vec, k
        k += k_step
    return vec, None


def test_reference_mode_matches_transcribed_scripts():
    model, layout, theta0, theta_t, x, y = small_setup(seed=5)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    expected_vec, expected_k = transcribed_reference(model, layout, theta0, theta_t, x, y,
                                                     0.001, 0.001, 1.0, 0.02)
    vec, (res,) = flain_repair(model, layout, theta0, theta_t, x, y, ["fc1"], "reference",
                               k_init=0.001, k_step=0.001, tolerance=0.02)
    assert expected_k is not None and expected_k > 0.01 and res.flipped > 0  # a real sweep
    assert res.k == expected_k and res.tolerance_reached and res.rescaled
    assert torch.allclose(vec, expected_vec, atol=1e-6)
    assert res.aux_acc_after == full_accuracy(model, layout, vec, x, y)


@pytest.mark.parametrize("rescale", [False, True])
def test_exact_repair_stays_within_tolerance(rescale):
    model, layout, theta0, theta_t, x, y = small_setup(seed=6)
    acc0 = full_accuracy(model, layout, theta_t, x, y)
    vec, (res,) = flain_repair(model, layout, theta0, theta_t, x, y, ["fc1"], "exact",
                               tolerance=0.05, rescale=rescale)
    acc = full_accuracy(model, layout, vec, x, y)
    assert res.flipped > 0 and res.aux_acc_after == acc and acc0 - acc <= 0.05
    untouched = torch.ones_like(vec, dtype=torch.bool)
    untouched[layout["fc1.weight"].slice] = False
    assert torch.equal(vec[untouched], theta_t[untouched])  # bias and other layers untouched


def test_two_layers_are_repaired_in_order_against_the_original_accuracy():
    model, layout, theta0, theta_t, x, y = small_setup(seed=7)
    acc0 = full_accuracy(model, layout, theta_t, x, y)
    vec, results = flain_repair(model, layout, theta0, theta_t, x, y, ["fc2", "fc1"], "exact",
                                tolerance=0.05)
    assert [r.layer for r in results] == ["fc2", "fc1"]
    assert results[1].aux_acc_before == acc0
    assert acc0 - full_accuracy(model, layout, vec, x, y) <= 0.05


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_named_errors():
    model, layout, theta0, theta_t, x, y = small_setup()
    with pytest.raises(ValueError, match="aux_x"):
        flain_repair(model, layout, theta0, theta_t, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"'fc9'.*\['conv1', 'fc1', 'fc2'\]"):
        flain_repair(model, layout, theta0, theta_t, x, y, ["fc9"])
    for kwargs, field in [({"mode": "fast"}, "mode"), ({"tolerance": 1.5}, "tolerance"),
                          ({"k_step": 0.0}, "k_step"), ({"layers": []}, "layers")]:
        with pytest.raises(ValueError, match=field):
            FLAIN(**kwargs)


# ----------------------------------------------------------------------------- callback
class RecordingLogger:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args))


def fake_sim(tmp_path, triggered: bool = True):
    model, layout, theta0, theta_t, x, y = small_setup(seed=8)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(vec):
        return {"acc": full_accuracy(model, layout, vec, x, y),
                "aux_acc": full_accuracy(model, layout, vec, x, y)}

    def test_set(xs, ys):
        xt = xs.clone()
        xt[:, :, -3:, -3:] = 1.0
        return xt, torch.zeros_like(ys)

    saved = {}
    logger = RecordingLogger()
    ctx = PostTrainContext(
        theta0=theta0, theta_t=theta_t, layout=layout, aux_x=x, aux_y=y, normalize=lambda t: (t - 0.5) / 0.5,
        device=torch.device("cpu"), seed=0, rounds=3, train_seconds=1.0, run_dir=tmp_path, logger=logger,
        model=model, evaluate=evaluate, triggered_aux_x=test_set(x, y)[0] if triggered else None)
    # the simulation's side: the context and the services the base class uses
    return SimpleNamespace(
        ctx=ctx, posttrain_context=lambda: ctx, layout=layout, theta0=theta0, trained_params=theta_t,
        logger=logger, summary={}, evaluate=evaluate, broadcast=lambda t: t,
        save_params=lambda vec, name: saved.update({name: vec.clone()}), saved=saved,
        set_final=lambda vec, evaluation, source: saved.update({"global": vec, "source": source}),
    )


def test_callback_writes_summary_plots_and_repaired_vector(tmp_path):
    sim = fake_sim(tmp_path)
    FLAIN(layers=["fc1"], tolerance=0.05).on_train_end(SimpleNamespace(is_global_zero=True), sim)
    block = sim.summary["flain"]
    for key in ("k", "flipped_neurons", "total_neurons", "aux_acc_before", "aux_acc_after",
                "mode", "curve", "acc_before", "acc_after", "seconds"):
        assert key in block
    assert block["total_neurons"] == 64 and block["mode"] == "exact"
    assert len(block["curve"]["k"]) == len(block["curve"]["aux_acc"]) > 0
    assert (tmp_path / "flain_activations.png").stat().st_size > 0
    assert (tmp_path / "flain_threshold.png").stat().st_size > 0
    hist_keys = [list(args[0]) for name, args in sim.logger.calls if name == "log_histograms"]
    assert hist_keys == [["flain/fc1/activation_clean", "flain/fc1/activation_triggered"]]  # one call, same bins
    repaired = sim.saved["flain_repaired.pt"]
    assert torch.equal(sim.saved["global"], repaired)
    w0 = sim.layout.view(sim.theta0, "fc1.weight")
    delta = sim.layout.view(sim.trained_params, "fc1.weight") - w0
    acts = sim.logger.calls[0][1][0]["flain/fc1/activation_clean"]
    w = flip_columns(w0, delta, acts, block["k"])
    w = w * (delta + w0).norm() / w.norm()
    assert block["flipped_neurons"] > 0
    assert torch.allclose(sim.layout.view(repaired, "fc1.weight"), w, atol=1e-6)


def test_callback_without_attack_and_with_empty_aux(tmp_path):
    sim = fake_sim(tmp_path, triggered=False)
    FLAIN(plots=False).on_train_end(SimpleNamespace(is_global_zero=True), sim)
    assert [list(a[0]) for n, a in sim.logger.calls if n == "log_histograms"] == \
        [["flain/fc1/activation_clean"]]
    assert not (tmp_path / "flain_activations.png").exists()
    empty = dataclasses.replace(sim.ctx, aux_x=sim.ctx.aux_x[:0], aux_y=sim.ctx.aux_y[:0])
    with pytest.raises(ValueError, match="auxiliary set is empty"):
        FLAIN().repair(empty)


def test_paired_drop_bound_by_hand():
    before = torch.tensor([True] * 8 + [False] * 2)
    after = before.clone()
    after[:3] = False  # lost 3
    after[8] = True  # won 1
    drop, low = paired_drop_bound(before, after, z=1.645)
    # diff 2 of n 10; se = sqrt(3 + 1 - 4 / 10) / 10 = 0.18974
    assert drop == pytest.approx(0.2)
    assert low == pytest.approx(0.2 - 1.645 * 0.189737, abs=1e-5)


def correctness_table(n: int, lost: list[int]):
    """aux_correct(mask) for 800 inputs all right before: ``lost[j]`` wrong with j flips."""
    def correct(mask):
        out = torch.ones(n, dtype=torch.bool)
        out[: lost[int(mask.sum())]] = False
        return out
    return correct


def test_confident_stop_is_not_decided_by_one_image():
    act = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    lost = [0, 1, 0, 1, 3, 6]  # one image comes and goes; then 3 and 6 images lost
    correct = correctness_table(800, lost)
    old = search_threshold(act, lambda m: float(correct(m).float().mean()), mode="exact",
                           tolerance=0.001)
    assert old.flipped == 0  # the drop rule stops at the first lost image
    new = search_threshold(act, None, mode="exact", tolerance=0.0, stop="confident",
                           aux_correct=correct)
    # 1 lost of 800: bound 1/800 - 1.645 * 1/800 < 0; 3 lost: 3 - 1.645 * sqrt(3) = 0.15 > 0
    assert (new.flipped, new.k, new.tolerance_reached, new.stop) == (3, pytest.approx(0.3), True,
                                                                     "confident")
    assert new.aux_acc_search == 799 / 800 and [c[2] for c in new.curve] == [1, 2, 3, 4]
    loose = search_threshold(act, None, mode="exact", tolerance=0.005, stop="confident",
                             aux_correct=correct)
    assert loose.flipped == 5 and not loose.tolerance_reached  # 6 lost: bound 0.0045 < 0.005


def test_confident_stop_is_checked_and_reference_mode_ignores_it():
    with pytest.raises(ValueError, match="flain.stop must be one of"):
        FLAIN(stop="never")
    with pytest.raises(ValueError, match="flain.confidence"):
        FLAIN(stop="confident", confidence=1.0)
    act = torch.tensor([0.3, 0.1])
    res = search_threshold(act, table_acc([0.9, 0.9, 0.8]), mode="reference", k_init=0.05,
                           k_step=0.1, tolerance=0.05, stop="confident")
    assert res.stop == "first" and res.flipped == 2
