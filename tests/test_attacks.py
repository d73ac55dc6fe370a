"""Attacks: triggers, poisoning counts, schedules, model poisons, composition, validation."""

import pytest
import torch
from torch import nn

from fedsim.attacks import (
    DBA,
    PGD,
    Attack,
    AttackContext,
    BadNets,
    Blended,
    ClientContext,
    EdgeCase,
    LabelFlip,
    Neurotoxin,
    Scaling,
    Schedule,
)
from fedsim.params import ParamLayout


def actx(image_shape=(1, 28, 28), num_clients=100, cohort_size=10, seed=0, layout=None, server_lr=1.0):
    layout = layout if layout is not None else ParamLayout(nn.Linear(2, 2))
    return AttackContext(image_shape, 10, num_clients, cohort_size, 50, seed, layout, server_lr)


def cctx(weights=None, prev=None, attacker_rank=0, round=0, client_id=0, cohort_size=10):
    weights = weights if weights is not None else torch.zeros(6)
    return ClientContext(round, client_id, weights, prev, 100, cohort_size, attacker_rank, 4)


def connected(part, **kw):
    part.connect(actx(**kw))
    return part


def changed_pixels(before, after):
    """Set of (row, col) that differ in any sample or channel."""
    diff = (before != after).any(dim=0).any(dim=0)
    return {tuple(rc) for rc in diff.nonzero().tolist()}


def box(rows, cols):
    return {(r, c) for r in rows for c in cols}


# ---------------------------------------------------------------- triggers


def test_badnets_default_mnist_stamps_bottom_right_5x5_only():
    x = torch.rand(3, 1, 28, 28) * 0.9  # strictly below the trigger value 1
    out, _ = connected(BadNets()).test_set(x, torch.zeros(3, dtype=torch.long))
    assert changed_pixels(x, out) == box(range(23, 28), range(23, 28))
    assert torch.all(out[..., 23:, 23:] == 1.0)


def test_badnets_default_cifar_stamps_4x4_two_pixels_from_corner_in_every_channel():
    x = torch.rand(2, 3, 32, 32) * 0.9
    cifar = connected(BadNets(), image_shape=(3, 32, 32))
    out, _ = cifar.test_set(x, torch.zeros(2, dtype=torch.long))
    assert changed_pixels(x, out) == box(range(26, 30), range(26, 30))
    assert torch.all(out[:, :, 26:30, 26:30] == 1.0)


def test_badnets_plus_and_checkerboard_at_explicit_position():
    x = torch.zeros(1, 1, 8, 8)
    plus = connected(BadNets(size=3, position=(2, 4), pattern="plus", value=0.5), image_shape=(1, 8, 8))
    checker = BadNets(size=2, position="top_left", margin=1, pattern="checkerboard")
    checker = connected(checker, image_shape=(1, 8, 8))
    out_plus, out_checker = plus.apply_trigger(x, None), checker.apply_trigger(x, None)
    assert changed_pixels(x, out_plus) == {(2, 5), (3, 4), (3, 5), (3, 6), (4, 5)}
    assert out_plus[0, 0, 3, 5] == 0.5
    assert changed_pixels(x, out_checker) == {(1, 1), (2, 2)}


def test_dba_local_triggers_are_the_papers_mnist_stripes_and_test_uses_their_union():
    dba = connected(DBA())
    x = torch.zeros(1, 1, 28, 28)
    stripes = [box([0], range(0, 4)), box([0], range(6, 10)), box([3], range(0, 4)), box([3], range(6, 10))]
    for rank in range(6):
        assert changed_pixels(x, dba.apply_trigger(x, cctx(client_id=rank))) == stripes[rank % 4]
    assert changed_pixels(x, dba.test_set(x, torch.zeros(1, dtype=torch.long))[0]) == set().union(*stripes)


def test_blended_loads_a_pattern_file_and_broadcasts_gray_to_channels(tmp_path):
    path = tmp_path / "pattern.pt"
    torch.save(torch.full((32, 32), 0.5), path)
    blended = connected(Blended(alpha=0.5, pattern=str(path)), image_shape=(3, 32, 32))
    out = blended.apply_trigger(torch.ones(1, 3, 32, 32), None)
    assert torch.equal(out, torch.full((1, 3, 32, 32), 0.75))


def test_blended_mixes_a_seeded_pattern():
    x = torch.rand(2, 1, 28, 28)
    a, b = connected(Blended(alpha=0.25)), connected(Blended(alpha=0.25))
    c = connected(Blended(alpha=0.25), seed=1)
    out = a.apply_trigger(x, None)
    assert torch.equal(out, 0.75 * x + 0.25 * a.pattern)
    assert torch.equal(a.pattern, b.pattern) and not torch.equal(a.pattern, c.pattern)
    assert a.pattern.shape == (1, 28, 28) and 0 <= a.pattern.min() and a.pattern.max() <= 1


# ---------------------------------------------------------------- poisoning counts and labels

LABELS = torch.tensor([0, 0, 0, 1, 1, 5, 5, 2, 3, 0])  # 8 samples not of class 5, 4 of class 0


def poison(part, labels=LABELS, seed=0):
    x = torch.rand(len(labels), 1, 28, 28) * 0.9
    xp, yp = connected(part).poison_batch(x, labels, cctx(), torch.Generator().manual_seed(seed))
    hit = (xp != x).flatten(1).any(dim=1)
    return x, xp, yp, hit


def test_all_to_one_poisons_exactly_half_of_the_non_target_samples():
    _, _, yp, hit = poison(BadNets(target=5, poison_fraction=0.5))
    assert hit.sum() == 4  # round(0.5 * 8)
    assert torch.all(LABELS[hit] != 5) and torch.all(yp[hit] == 5)
    assert torch.equal(yp[~hit], LABELS[~hit])


def test_one_to_one_poisons_only_the_source_class_and_rounds_half_up():
    _, _, yp, hit = poison(BadNets(target=5, source_class=0, poison_fraction=0.375))
    assert hit.sum() == 2  # 0.375 * 4 = 1.5 -> 2
    assert torch.all(LABELS[hit] == 0) and torch.all(yp[hit] == 5)
    assert torch.equal(yp[~hit], LABELS[~hit])


def test_label_flip_relabels_every_source_sample_and_keeps_pixels():
    x, xp, yp, hit = poison(LabelFlip(source_class=0, target=5))
    assert torch.equal(xp, x)
    assert torch.equal(yp, torch.where(LABELS == 0, 5, LABELS))


def test_edge_case_relabels_only_its_sub_population():
    x, xp, yp, _ = poison(EdgeCase(classes=[1, 3], target=5))
    assert torch.equal(xp, x)
    assert yp.tolist() == [0, 0, 0, 5, 5, 5, 5, 2, 5, 0]


def test_zero_poison_fraction_returns_the_batch_and_draws_nothing():
    x, y = torch.rand(10, 1, 28, 28), LABELS
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    xp, yp = connected(BadNets(poison_fraction=0.0)).poison_batch(x, y, cctx(), gen)
    assert xp is x and yp is y and torch.equal(gen.get_state(), state)


def test_test_set_excludes_target_class_and_one_to_one_keeps_only_source():
    x = torch.rand(10, 1, 28, 28) * 0.9
    xa, ya = connected(BadNets(target=5)).test_set(x, LABELS)
    xo, yo = connected(BadNets(target=5, source_class=0)).test_set(x, LABELS)
    xl, yl = connected(LabelFlip(source_class=1, target=5)).test_set(x, LABELS)
    assert len(xa) == 8 and torch.all(ya == 5)
    assert torch.equal(xa[..., :20, :20], x[LABELS != 5][..., :20, :20])  # away from the patch
    assert len(xo) == 4 and torch.all(yo == 5)
    assert torch.equal(xl, x[LABELS == 1]) and yl.tolist() == [5, 5]


# ---------------------------------------------------------------- schedules


def schedule(**kw):
    s = Schedule(**kw)
    s.connect(actx(num_clients=100, seed=7))
    return s


def test_per_round_marks_exactly_round_mcr_m_members_deterministically():
    cohort = torch.arange(0, 70, 10)  # m = 7
    masks = [schedule(mcr=0.5).malicious(r, cohort) for r in range(5)]
    assert all(m.sum() == 4 for m in masks)  # 3.5 -> 4
    again = [schedule(mcr=0.5).malicious(r, cohort) for r in reversed(range(5))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    assert any(not torch.equal(masks[0], m) for m in masks[1:])  # fresh draw per round


def test_fixed_attackers_are_constant_and_attack_when_sampled():
    s = schedule(mcr=0.2, mode="fixed")
    everyone = torch.arange(100)
    attackers = everyone[s.malicious(0, everyone)]
    assert len(attackers) == 20
    for r in range(1, 4):
        assert torch.equal(everyone[s.malicious(r, everyone)], attackers)
    honest = torch.tensor([i for i in range(100) if i not in attackers][:5])
    cohort = torch.cat([attackers[:3], honest]).sort().values
    assert s.malicious(9, cohort).sum() == 3


def test_redraw_draws_a_fresh_population_set_each_round():
    s = schedule(mcr=0.2, mode="redraw")
    everyone = torch.arange(100)
    masks = [s.malicious(r, everyone) for r in range(3)]
    assert all(m.sum() == 20 for m in masks)
    assert not torch.equal(masks[0], masks[1])


def test_active_round_window_and_explicit_rounds():
    cohort = torch.arange(10)
    window = schedule(mcr=0.5, start_round=2, end_round=6, every=2)
    shots = schedule(mcr=0.5, rounds=[7, 3])
    assert [r for r in range(10) if window.malicious(r, cohort).any()] == [2, 4, 6]
    assert [r for r in range(10) if shots.malicious(r, cohort).any()] == [3, 7]


# ---------------------------------------------------------------- model poisons


def test_pgd_keeps_weights_in_the_eps_ball_every_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    layout = ParamLayout(model)
    pgd = connected(PGD(eps=0.05), layout=layout)
    start = layout.flatten(model)
    ctx = cctx(weights=start[: layout.num_weights].clone())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
        pgd.after_step(model, ctx)
        dist = (layout.flatten(model) - start).norm()
        assert dist <= 0.05 + 1e-6 and dist >= 0.05 - 1e-4  # lr=1 steps leave the ball: projected onto it
    assert pgd.shape_update(torch.full((15,), 1.0), ctx).norm() == pytest.approx(0.05)


def test_pgd_every_two_steps_skips_odd_steps():
    model = nn.Linear(2, 2)
    layout = ParamLayout(model)
    pgd = connected(PGD(eps=0.01, every=2), layout=layout)
    ctx = cctx(weights=layout.flatten(model).clone())
    with torch.no_grad():
        model.weight.add_(1.0)  # distance 2 from the global weights
    pgd.after_step(model, ctx)
    assert (layout.flatten(model) - ctx.global_weights).norm() == pytest.approx(2.0)
    pgd.after_step(model, ctx)
    assert (layout.flatten(model) - ctx.global_weights).norm() == pytest.approx(0.01)


def test_neurotoxin_update_is_exactly_zero_on_the_top_k_coordinates():
    model = nn.Linear(2, 2)  # 6 weights
    layout = ParamLayout(model)
    tox = connected(Neurotoxin(top_k=0.34), layout=layout)  # 0.34 * 6 = 2.04 -> 2 excluded
    ctx = cctx(weights=layout.flatten(model).clone(), prev=torch.tensor([0.1, -5.0, 0.2, 4.0, 0.3, 0.0]))
    out = tox.shape_update(torch.arange(1.0, 7.0), ctx)
    assert out.tolist() == [1.0, 0.0, 3.0, 0.0, 5.0, 6.0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    tox.after_step(model, ctx)
    moved = layout.flatten(model) - ctx.global_weights
    assert (moved == 0).tolist() == [False, True, False, True, False, False]
    assert moved[[0, 2, 4, 5]].tolist() == pytest.approx([1.0] * 4)


def test_neurotoxin_without_previous_update_leaves_everything():
    tox = connected(Neurotoxin(top_k=0.5))
    update = torch.arange(6.0)
    assert tox.shape_update(update, cctx(prev=None)) is update


def test_scaling_gamma_one_is_identity_and_default_is_cohort_over_server_lr():
    update = torch.tensor([1.0, -2.0])
    assert connected(Scaling(gamma=1.0)).shape_update(update, cctx()) is update
    default = connected(Scaling(), server_lr=0.5).shape_update(update, cctx(cohort_size=10))
    assert default.tolist() == [20.0, -40.0]


# ---------------------------------------------------------------- composition


def test_attack_applies_model_parts_in_list_order():
    update = torch.tensor([6.0, 8.0])  # norm 10
    project_then_scale = Attack(BadNets(), [PGD(eps=1.0), Scaling(gamma=2.0)])
    scale_then_project = Attack(BadNets(), [Scaling(gamma=2.0), PGD(eps=1.0)])
    for a in (project_then_scale, scale_then_project):
        a.connect(actx())
    assert project_then_scale.shape_update(update, cctx()).tolist() == pytest.approx([1.2, 1.6])
    assert scale_then_project.shape_update(update, cctx()).tolist() == pytest.approx([0.6, 0.8])
    assert project_then_scale.state_dict() == {}


def test_model_only_attack_has_no_test_set_and_leaves_batches():
    attack = Attack(model=[Scaling(gamma=3.0)], schedule=Schedule(mcr=0.5))
    attack.connect(actx())
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    assert attack.test_set(x, y) is None
    assert attack.poison_batch(x, y, cctx(), torch.Generator()) == (x, y)
    assert attack.malicious(0, torch.arange(10)).sum() == 5


def test_attack_resolves_from_yaml_class_paths():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--attack", type=Attack)
    cfg = parser.parse_string(
        "attack:\n"
        "  data: {class_path: fedsim.attacks.BadNets, init_args: {source_class: 0, poison_fraction: 0.25}}\n"
        "  model:\n"
        "    - {class_path: fedsim.attacks.PGD, init_args: {eps: 2.0}}\n"
        "    - {class_path: fedsim.attacks.Scaling}\n"
        "  schedule: {mcr: 0.1, mode: fixed}\n"
    )
    attack = parser.instantiate_classes(cfg).attack
    assert isinstance(attack.data, BadNets) and attack.data.poison_fraction == 0.25
    assert [type(m) for m in attack.model] == [PGD, Scaling] and attack.model[0].eps == 2.0
    assert attack.schedule.mode == "fixed" and attack.schedule.mcr == 0.1


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: BadNets(poison_fraction=1.5), "BadNets.poison_fraction"),
        (lambda: BadNets(target=5, source_class=5), "BadNets.source_class"),
        (lambda: BadNets(position="middle"), "BadNets.position"),
        (lambda: BadNets(pattern="star"), "BadNets.pattern"),
        (lambda: BadNets(value=2.0), "BadNets.value"),
        (lambda: Blended(alpha=0.0), "Blended.alpha"),
        (lambda: DBA(num_parts=0), "DBA.num_parts"),
        (lambda: LabelFlip(target=-1), "LabelFlip.target"),
        (lambda: EdgeCase(classes=[1, 5], target=5), "EdgeCase.classes"),
        (lambda: Schedule(mcr=-0.1), "schedule.mcr"),
        (lambda: Schedule(mode="sometimes"), "schedule.mode"),
        (lambda: Schedule(start_round=5, end_round=2), "schedule.end_round"),
        (lambda: Schedule(every=0), "schedule.every"),
        (lambda: PGD(eps=0.0), "PGD.eps"),
        (lambda: Neurotoxin(top_k=1.0), "Neurotoxin.top_k"),
        (lambda: Scaling(gamma=0.0), "Scaling.gamma"),
        (lambda: Attack(lr=0.0), "attack.lr"),
        (lambda: Attack(epochs=0), "attack.epochs"),
        (lambda: connected(BadNets(target=10)), "BadNets.target"),
        (lambda: connected(BadNets(size=30)), "BadNets.size"),
        (lambda: connected(DBA(top=27)), "DBA."),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()
