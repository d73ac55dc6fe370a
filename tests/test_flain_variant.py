"""FLAIN's update-ratio ranking (``rank="update_ratio"``): the order, the flips, the checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim.params import ParamLayout
from flain import FLAIN, flain_repair
from flain.functional import column_norms, flip_columns, update_ratio_order


def test_column_norms_of_linear_and_conv_weights():
    d = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    assert torch.equal(column_norms(d), torch.tensor([5.0, 0.0, 2 ** 0.5], dtype=torch.float64))
    conv = torch.zeros(2, 3, 2, 2)
    conv[:, 1] = 1.0  # input channel 1: 8 ones
    assert torch.allclose(column_norms(conv), torch.tensor([0.0, 8 ** 0.5, 0.0], dtype=torch.float64))


def test_update_ratio_order_by_hand():
    act = torch.tensor([0.0, 0.5, 1.0, -0.2, 0.25])
    # column norms 1, 2, 0.1, 5, 0.5  ->  scores 1/floor (dormant), 4, 0.1, (negative: excluded), 2
    delta = torch.zeros(1, 5)
    delta[0] = torch.tensor([1.0, 2.0, 0.1, 5.0, 0.5])
    pseudo = update_ratio_order(act, delta, eps=0.01)
    # floor = 0.01 * mean(0.5, 1, 0.25); order by score: j0, j1, j4, j2; j3 never flipped
    assert torch.allclose(pseudo, torch.tensor([0.25, 0.5, 1.0, -1.0, 0.75]))
    flipped = flip_columns(torch.zeros(1, 5), delta, pseudo, 0.5)  # top half by score
    assert torch.equal(flipped[0], torch.tensor([-1.0, -2.0, 0.1, 5.0, 0.5]))


def four_inputs():
    """A Linear(4, 2) layer from theta_0 = 0 with clean activations 1, 1, 1, 0 (neuron 3 dormant)
    and trained columns 5, 0.1, -0.1, 0.2: column 0 moved 50 times more than columns 1-2.
    Returns (model, layout, theta0, theta_t, w_t, x, y)."""
    model = nn.Sequential(nn.Linear(4, 2))
    layout = ParamLayout(model)
    theta0 = torch.zeros(layout.numel)
    w = torch.zeros(2, 4)
    w[:, 0], w[:, 1], w[:, 2], w[:, 3] = 5.0, 0.1, -0.1, 0.2
    theta_t = theta0.clone()
    layout.view(theta_t, "0.weight").copy_(w)
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(8, 1)
    return model, layout, theta0, theta_t, w, x, torch.zeros(8, dtype=torch.long)


def test_activation_ranking_skips_an_active_neuron_with_a_disproportionate_update():
    """The dormancy-aware attacker's case: the backdoor column belongs to an active neuron.

    fc1 has 4 inputs with clean activations 1, 1, 1, 0 (neuron 3 dormant). Column 0 got an
    update 50 times larger than columns 1-2 although all three are equally active. FLAIN (by
    activation, k_cap 0.5) can only flip neuron 3; the update ratio ranks neuron 3 first and
    neuron 0 second, so with k_cap 0.5 (half the neurons) it flips exactly those two."""
    model, layout, theta0, theta_t, w, x, y = four_inputs()
    _, (by_act,) = flain_repair(model, layout, theta0, theta_t, x, y, ["0"], "exact",
                                tolerance=1.0, rescale=False, k_cap=0.5)
    assert by_act.flipped == 1  # below k_cap = 0.5 only the dormant neuron is eligible
    vec, (by_ratio,) = flain_repair(model, layout, theta0, theta_t, x, y, ["0"], "exact",
                                  tolerance=1.0, rescale=False, k_cap=0.5, rank="update_ratio")
    assert by_ratio.rank == "update_ratio" and by_ratio.flipped == 2
    assert [c[2] for c in by_ratio.curve] == [1, 2]
    repaired = layout.view(vec, "0.weight")
    assert torch.equal(repaired[:, 0], -w[:, 0]) and torch.equal(repaired[:, 3], -w[:, 3])
    assert torch.equal(repaired[:, 1:3], w[:, 1:3])  # the benign active columns are kept
    assert torch.equal(by_ratio.activations, torch.tensor([1.0, 1.0, 1.0, 0.0]))  # real ones reported


def test_update_ratio_stays_within_tolerance_on_a_cnn():
    from tests.test_flain import full_accuracy, small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=6)
    acc0 = full_accuracy(model, layout, theta_t, x, y)
    vec, (res,) = flain_repair(model, layout, theta0, theta_t, x, y, ["fc1"], "exact",
                               tolerance=0.05, rank="update_ratio")
    assert res.flipped > 0 and acc0 - full_accuracy(model, layout, vec, x, y) <= 0.05 + 1e-9


def test_update_ratio_settings_are_checked():
    from tests.test_flain import small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=1)
    with pytest.raises(ValueError, match=r"flain.rank must be one of \['activation', 'update_ratio'\], got 'norm'"):
        flain_repair(model, layout, theta0, theta_t, x, y, rank="norm")
    with pytest.raises(ValueError, match="needs mode='exact'"):
        flain_repair(model, layout, theta0, theta_t, x, y, mode="reference", rank="update_ratio")
    with pytest.raises(ValueError, match=r"flain.rank_eps must be > 0 \(or a non-empty list of such values, one stage each\), got 0"):
        flain_repair(model, layout, theta0, theta_t, x, y, rank="update_ratio", rank_eps=0)


def test_the_callback_passes_rank_through_and_reports_it(tmp_path):
    """End to end on the tiny federation: a FLAIN callback ranked by update ratio runs beside the
    default one from the same theta_T, and the summary says which order each used."""
    from fedsim.cli import main

    cbs = tmp_path / "cbs.yaml"
    cbs.write_text("callbacks:\n"
                   "  - class_path: flain.FLAIN\n    init_args: {apply: false, plots: false}\n"
                   "  - class_path: flain.FLAIN\n    init_args: {name: flain_ratio, rank: update_ratio,"
                   " stop: confident, tolerance: 0.0, apply: false, plots: false}\n")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    summary = main(["--config", str(root / "tests/configs/tiny.yaml"), "--config", str(root / "tests/configs/badnets.yaml"),
                    "--config", str(cbs), "--fed.rounds", "2", "--run_dir", str(tmp_path / "run")])
    assert summary["flain"]["rank"] == "activation" and summary["flain_ratio"]["rank"] == "update_ratio"
    assert summary["flain"]["acc_before"] == summary["flain_ratio"]["acc_before"]
    assert 0 < summary["flain_ratio"]["flipped_neurons"] <= summary["flain_ratio"]["total_neurons"]


def test_stages_rank_the_remaining_neurons_against_the_previous_stage():
    """Two stages on the 4-input example: stage 1 (k_cap 0.34: one of the four) flips the dormant
    neuron 3, stage 2 ranks only neurons 0-2 and flips neuron 0 first; nothing is flipped back."""
    model, layout, theta0, theta_t, w, x, y = four_inputs()
    vec, results = flain_repair(model, layout, theta0, theta_t, x, y, ["0"], "exact", tolerance=1.0,
                                rescale=False, k_cap=0.34, rank="update_ratio", rank_eps=[0.01, 0.01])
    assert [r.layer for r in results] == ["0", "0#2"] and [r.flipped for r in results] == [1, 1]
    repaired = layout.view(vec, "0.weight")
    assert torch.equal(repaired[:, 3], -w[:, 3]) and torch.equal(repaired[:, 0], -w[:, 0])
    assert torch.equal(repaired[:, 1:3], w[:, 1:3])
    assert results[1].order[3] == -1  # stage 1's neuron is out of stage 2's ranking


def test_stages_need_the_update_ratio():
    from tests.test_flain import small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=1)
    with pytest.raises(ValueError, match="needs rank='update_ratio'"):
        flain_repair(model, layout, theta0, theta_t, x, y, rank_eps=[0.01, 1.0])
    with pytest.raises(ValueError, match="flain.rank_eps must be > 0"):
        flain_repair(model, layout, theta0, theta_t, x, y, rank="update_ratio", rank_eps=[])


def test_the_summary_of_stages_counts_each_neuron_once():
    from flain.callback import summarize

    model, layout, theta0, theta_t, _, x, y = four_inputs()
    _, results = flain_repair(model, layout, theta0, theta_t, x, y, ["0"], "exact", tolerance=1.0,
                              rescale=False, k_cap=0.34, rank="update_ratio", rank_eps=[0.01, 0.01])
    block = summarize(results)
    assert block["total_neurons"] == 4 and block["flipped_neurons"] == 2 and block["rank"] == "update_ratio"
    assert block["layers"] == ["0", "0#2"] and set(block["per_layer"]) == {"0", "0#2"}
    assert [r.stage for r in results] == [1, 2]


def test_max_drop_caps_what_the_confident_rule_would_still_accept():
    """Each flipped neuron loses two aux images and wins one back: the paired bound stays below 0
    up to 7 neurons (the confident rule stops at the 8th and keeps 7), but the observed drop is
    j/100 after j of them, so max_drop = 0.025 keeps j = 2."""
    from flain import search_threshold

    act = torch.linspace(0.1, 0.8, 8)
    before = torch.zeros(100, dtype=torch.bool)
    before[:50] = True

    def correct(mask):
        out = before.clone()
        for j in range(int(mask.sum())):
            out[2 * j], out[2 * j + 1], out[50 + j] = False, False, True
        return out

    def acc(mask):
        return float(correct(mask).float().mean())

    kw = dict(mode="exact", stop="confident", tolerance=0.0, aux_correct=correct, correct_before=before)
    assert search_threshold(act, acc, **kw).flipped == 7
    capped = search_threshold(act, acc, max_drop=0.025, **kw)
    assert capped.flipped == 2 and capped.tolerance_reached


def test_max_drop_needs_the_confident_rule():
    from tests.test_flain import small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=1)
    with pytest.raises(ValueError, match="flain.max_drop must be null or in \\[0, 1\\] with mode='exact' and stop='confident'"):
        flain_repair(model, layout, theta0, theta_t, x, y, max_drop=0.01)
    vec, (res,) = flain_repair(model, layout, theta0, theta_t, x, y, stop="confident", tolerance=0.0, max_drop=0.0)
    assert res.aux_acc_before - res.aux_acc_after <= 1e-12  # a zero budget: nothing that loses accuracy


# ---------------------------------------------------------------- fine-tuning after the flips


def test_finetune_trains_the_model_but_holds_the_flipped_columns(tmp_path):
    """``finetune_epochs``: the repaired model is the flipped one fine-tuned on the aux set. Every
    flipped fc1 column keeps its flipped value bit for bit; the rest of the network moves; without
    ``finetune_freeze`` the flipped columns move too. Fine-tuning 0 epochs is plain FLAIN."""
    from types import SimpleNamespace

    from tests.test_flain import fake_sim

    zero = SimpleNamespace(is_global_zero=True)
    plain, tuned, loose = fake_sim(tmp_path), fake_sim(tmp_path), fake_sim(tmp_path)
    FLAIN(layers=["fc1"], tolerance=0.05, rescale=False, plots=False).on_train_end(zero, plain)
    FLAIN(layers=["fc1"], tolerance=0.05, rescale=False, plots=False, finetune_epochs=2, finetune_lr=0.01).on_train_end(zero, tuned)
    FLAIN(layers=["fc1"], tolerance=0.05, rescale=False, plots=False, finetune_epochs=2, finetune_lr=0.01,
          finetune_freeze=False).on_train_end(zero, loose)
    flipped_vec, tuned_vec, loose_vec = (s.saved["flain_repaired.pt"] for s in (plain, tuned, loose))
    res = plain.summary["flain"]
    assert res["flipped_neurons"] > 0 and "finetune" not in res
    layout = plain.layout
    mask = ~torch.isclose(layout.view(flipped_vec, "fc1.weight"), layout.view(plain.trained_params, "fc1.weight")).all(0)
    assert int(mask.sum()) == res["flipped_neurons"]  # the flipped columns, found from the weights
    w_flip, w_tuned, w_loose = (layout.view(v, "fc1.weight") for v in (flipped_vec, tuned_vec, loose_vec))
    assert torch.equal(w_tuned[:, mask], w_flip[:, mask])  # held exactly
    assert not torch.equal(w_tuned[:, ~mask], w_flip[:, ~mask])  # the others trained
    assert not torch.equal(layout.view(tuned_vec, "conv1.weight"), layout.view(flipped_vec, "conv1.weight"))
    assert not torch.equal(w_loose[:, mask], w_flip[:, mask])  # unfrozen: they move as well
    block = tuned.summary["flain"]["finetune"]
    assert block["epochs"] == 2 and block["frozen_columns"] == res["flipped_neurons"]
    assert len(block["loss_per_epoch"]) == 2 and loose.summary["flain"]["finetune"]["frozen_columns"] == 0
    assert tuned.summary["flain"]["flipped_neurons"] == res["flipped_neurons"]  # same flips, then tuning


def test_finetune_settings_are_checked():
    with pytest.raises(ValueError, match=r"flain.finetune_epochs must be an int >= 0, got -1"):
        FLAIN(finetune_epochs=-1)
    with pytest.raises(ValueError, match=r"flain.finetune_optimizer must be one of \['sgd', 'adam'\], got 'rmsprop'"):
        FLAIN(finetune_optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"flain.finetune_lr must be > 0, got 0"):
        FLAIN(finetune_lr=0)


def test_tolerance_in_units_of_the_error_is_that_fraction_of_theta_t_aux_error():
    """``tolerance_unit="error"``: the search allows ``tolerance * (1 - acc_T)`` of drop. The
    result is the accuracy-unit search at that drop, bit for bit, on every layer; and on a
    model with more error to spare the same setting allows more."""
    from tests.test_flain import full_accuracy, small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=6)
    acc_t = full_accuracy(model, layout, theta_t, x, y)
    assert 0.05 < 1 - acc_t < 0.95  # the case has error to scale
    vec_e, res_e = flain_repair(model, layout, theta0, theta_t, x, y, ["conv1", "fc1"], "exact",
                                tolerance=0.5, tolerance_unit="error")
    vec_a, res_a = flain_repair(model, layout, theta0, theta_t, x, y, ["conv1", "fc1"], "exact",
                                tolerance=0.5 * (1 - acc_t))
    assert torch.equal(vec_e, vec_a) and sum(r.flipped for r in res_e) > 0
    assert [r.k for r in res_e] == [r.k for r in res_a] and [r.flipped for r in res_e] == [r.flipped for r in res_a]
    assert all(abs(r.tolerance - 0.5 * (1 - acc_t)) < 1e-12 for r in res_e)  # theta_T's error for both layers
    assert acc_t - full_accuracy(model, layout, vec_e, x, y) <= 0.5 * (1 - acc_t) + 1e-9
    # the default unit leaves the tolerance as given
    _, (plain,) = flain_repair(model, layout, theta0, theta_t, x, y, ["fc1"], "exact", tolerance=0.5)
    assert plain.tolerance == 0.5


def test_tolerance_unit_is_checked_and_reported(tmp_path):
    from types import SimpleNamespace

    from tests.test_flain import fake_sim, small_setup

    model, layout, theta0, theta_t, x, y = small_setup(seed=1)
    with pytest.raises(ValueError, match=r"flain.tolerance_unit must be one of \['accuracy', 'error'\], got 'images'"):
        flain_repair(model, layout, theta0, theta_t, x, y, tolerance_unit="images")
    with pytest.raises(ValueError, match=r"flain.tolerance_unit='error' needs mode='exact'.*got mode='reference'"):
        FLAIN(mode="reference", tolerance_unit="error")
    zero = SimpleNamespace(is_global_zero=True)
    sim, plain = fake_sim(tmp_path), fake_sim(tmp_path)
    FLAIN(layers=["fc1"], tolerance=0.5, tolerance_unit="error", plots=False).on_train_end(zero, sim)
    block = sim.summary["flain"]
    assert block["tolerance_unit"] == "error" and 0 < block["tolerance_effective"] < 0.5 and block["flipped_neurons"] > 0
    # the same search in accuracy units at the reported drop: the same flips, the same model
    FLAIN(layers=["fc1"], tolerance=block["tolerance_effective"], plots=False).on_train_end(zero, plain)
    assert plain.summary["flain"]["k"] == block["k"] and plain.summary["flain"]["flipped_neurons"] == block["flipped_neurons"]
    assert torch.equal(plain.saved["flain_repaired.pt"], sim.saved["flain_repaired.pt"])
    assert "tolerance_unit" not in plain.summary["flain"] and "tolerance_effective" not in plain.summary["flain"]


def test_distillation_loss_by_hand():
    """``distillation_loss``: ``(1 - w) CE + w T^2 KL(softmax(z_t/T) || softmax(z/T))``, batch mean,
    checked against the formula written out in float64 for two samples and three classes."""
    import math

    from fedsim.repair.finetune import distillation_loss

    teacher = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    inputs = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    logits = torch.tensor([[0.2, 0.1, -0.3], [1.0, 0.0, 0.5]])
    y = torch.tensor([2, 0])
    t = 2.0

    def softmax(z):
        m = [math.exp(v / t) for v in z]
        return [v / sum(m) for v in m]

    zt = [[1.0, 2.0, 3.0], [0.5, -1.0, -0.5]]  # teacher(inputs), by hand
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(a), softmax(b)))
             for a, b in zip(zt, logits.tolist())) / 2 * t * t
    ce = sum(-math.log(math.exp(z[c]) / sum(math.exp(v) for v in z)) for z, c in zip(logits.tolist(), y.tolist())) / 2
    for w in (0.0, 0.3, 1.0):
        got = distillation_loss(teacher, w, t)(logits, inputs, y)
        assert abs(float(got) - ((1 - w) * ce + w * kl)) < 1e-6
    # a student that already outputs the teacher's logits has nothing to distil
    same = teacher(inputs).detach()
    assert abs(float(distillation_loss(teacher, 1.0, t)(same, inputs, y))) < 1e-7


def test_distilled_finetune_holds_the_flips_and_moves_toward_theta_t(tmp_path):
    """``finetune_distill``: the flipped columns are held as with the cross-entropy fine-tune; the
    result differs from that fine-tune; and it ends closer to theta_T's outputs on the aux set (the
    KL from theta_T's softmax) than the flipped model it started from and than the cross-entropy
    fine-tune with the same steps. The summary names the loss."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from tests.test_flain import fake_sim

    zero = SimpleNamespace(is_global_zero=True)
    plain, ce, kd = fake_sim(tmp_path), fake_sim(tmp_path), fake_sim(tmp_path)
    common = dict(layers=["fc1"], tolerance=0.05, rescale=False, plots=False)
    FLAIN(**common).on_train_end(zero, plain)
    FLAIN(**common, finetune_epochs=3, finetune_lr=1e-3).on_train_end(zero, ce)
    FLAIN(**common, finetune_epochs=3, finetune_lr=1e-3, finetune_distill=1.0,
          finetune_temperature=2.0).on_train_end(zero, kd)
    flipped_vec, ce_vec, kd_vec = (s.saved["flain_repaired.pt"] for s in (plain, ce, kd))
    layout, ctx = plain.layout, plain.ctx
    mask = ~torch.isclose(layout.view(flipped_vec, "fc1.weight"), layout.view(plain.trained_params, "fc1.weight")).all(0)
    assert int(mask.sum()) == plain.summary["flain"]["flipped_neurons"] > 0
    assert torch.equal(layout.view(kd_vec, "fc1.weight")[:, mask], layout.view(flipped_vec, "fc1.weight")[:, mask])
    assert not torch.equal(kd_vec, ce_vec) and not torch.equal(kd_vec, flipped_vec)

    def kl_to_theta_t(vec):
        model = ctx.model
        model.eval()
        with torch.no_grad():
            layout.load(model, plain.trained_params)
            target = F.log_softmax(model(ctx.normalize(ctx.aux_x)), 1)
            layout.load(model, vec)
            out = F.log_softmax(model(ctx.normalize(ctx.aux_x)), 1)
        return float(F.kl_div(out, target, reduction="batchmean", log_target=True))

    assert kl_to_theta_t(kd_vec) < min(kl_to_theta_t(flipped_vec), kl_to_theta_t(ce_vec))
    block = kd.summary["flain"]["finetune"]
    assert block["distill"] == 1.0 and block["temperature"] == 2.0 and len(block["loss_per_epoch"]) == 3
    assert "distill" not in ce.summary["flain"]["finetune"]  # the cross-entropy summaries stay as they were


def test_distill_settings_are_checked():
    from fedsim.repair import FineTuning

    with pytest.raises(ValueError, match=r"flain.finetune_distill must be in \[0, 1\].*got 1.5"):
        FLAIN(finetune_distill=1.5)
    with pytest.raises(ValueError, match=r"flain.finetune_temperature must be > 0, got 0"):
        FLAIN(finetune_temperature=0)
    with pytest.raises(ValueError, match=r"fine_tuning.distill must be in \[0, 1\].*got -0.1"):
        FineTuning(distill=-0.1)
