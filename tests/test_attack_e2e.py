"""Attacks end to end on the embedded real MNIST: zero strength == honest, backdoors succeed."""

import pytest
import torch

from fedsim.cli import main

from conftest import TINY

# 10 clients, 5 per round, 8 rounds of FedAvg, a 64-unit MLP on the 4,000 embedded digits.
BASE = ["--config", str(TINY), "--data.init_args.limit_train", "null", "--data.init_args.limit_test", "null",
        "--fed.num_clients", "10", "--fed.rounds", "8", "--model.init_args.hidden", "64"]
ATTACK = ["--attack", "fedsim.attacks.Attack", "--attack.schedule.mcr", "0.2"]


def _run(tmp_path, name, *extra):
    summary = main(BASE + ["--run_dir", str(tmp_path / name), *extra])
    params = torch.load(tmp_path / name / "final_model.pt", weights_only=True)["params"]
    return summary["trained"], params


def test_attack_of_strength_zero_is_exactly_the_honest_run(tmp_path):
    honest, honest_params = _run(tmp_path, "honest")
    zero, zero_params = _run(tmp_path, "zero", *ATTACK, "--attack.data", "fedsim.attacks.BadNets",
                             "--attack.data.poison_fraction", "0", "--attack.model",
                             '[{"class_path": "fedsim.attacks.Scaling", "init_args": {"gamma": 1.0}}]')
    assert torch.equal(honest_params, zero_params)
    assert zero["acc"] == honest["acc"]
    assert zero["asr"] < 0.2  # the model was never poisoned: ASR is the base rate of predicting 5


@pytest.mark.parametrize("attack, min_asr", [("fedsim.attacks.BadNets", 0.9), ("fedsim.attacks.DBA", 0.6)])
def test_backdoor_reaches_high_asr_and_keeps_clean_accuracy(tmp_path, attack, min_asr):
    honest, _ = _run(tmp_path, "honest")
    attacked, _ = _run(tmp_path, "attacked", *ATTACK, "--attack.data", attack)
    # Measured here: BadNets ASR 0.98, DBA 0.77, clean ACC 0.91 vs 0.91 honest.
    assert attacked["asr"] >= min_asr
    assert honest["acc"] - attacked["acc"] < 0.03
