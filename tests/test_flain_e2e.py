"""FLAIN end to end: BadNets on the embedded real MNIST, FedAvg, FLAIN after the last round."""

import csv
import json

import pytest

from fedsim.cli import main

from conftest import TINY

# The FLAIN reference MNIST CNN, 10 clients, 5 per round, 6 rounds, 20% of each cohort poisons.
ARGS = ["--config", str(TINY), "--data.init_args.limit_train", "null", "--data.init_args.limit_test", "500",
        "--fed.num_clients", "10", "--fed.rounds", "6", "--model", "fedsim.models.MnistCNN",
        "--client.optimizer", "adam", "--client.lr", "0.001", "--client.batch_size", "64",
        "--fed.aux_per_class", "50", "--attack", "fedsim.attacks.Attack", "--attack.schedule.mcr", "0.2",
        "--attack.data", "fedsim.attacks.BadNets",
        "--callbacks", '[{"class_path": "flain.FLAIN", "init_args": {"plots": false}}]']


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flain") / "run"
    return run_dir, main(ARGS + ["--run_dir", str(run_dir)])


def test_flain_removes_the_backdoor_at_small_clean_cost(trained):
    _, summary = trained
    block = summary["flain"]
    # Measured here: ASR 0.90 -> 0.00, ACC 0.814 -> 0.816, 444 of 3,136 fc1 inputs flipped.
    assert block["asr_before"] > 0.6
    assert block["asr_after"] < 0.1
    assert block["acc_before"] - block["acc_after"] < 0.01
    assert 0 < block["flipped_neurons"] < block["total_neurons"] == 64 * 7 * 7
    assert summary["trained"]["asr"] == block["asr_before"]  # "trained" is theta_T, before the defense
    assert summary["final"]["model"] == "flain" and summary["final"]["asr"] == block["asr_after"]


def test_flain_alone_on_a_saved_checkpoint_without_retraining(trained, tmp_path):
    run_dir, summary = trained
    again = main(ARGS + ["--run_dir", str(tmp_path / "flain_only"), "--resume",
                         str(run_dir / "checkpoints" / "last.ckpt")])
    with open(tmp_path / "flain_only" / "metrics.csv", newline="") as f:
        assert not any(row.get("train_loss") for row in csv.DictReader(f))  # no round was trained
    for key in ("asr_before", "asr_after", "acc_after", "k", "flipped_neurons"):
        assert again["flain"][key] == summary["flain"][key]
    on_disk = json.loads((tmp_path / "flain_only" / "summary.json").read_text())
    assert on_disk["flain"]["asr_after"] == summary["flain"]["asr_after"]
    assert (tmp_path / "flain_only" / "flain_repaired.pt").is_file()
