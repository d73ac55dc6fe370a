"""Bad input fails before training, with an error that names the field (and allowed values)."""

import pytest
import torch
from jsonargparse import ArgumentError

from fedsim.cli import main


def _fails(tiny_args, extra, error, match):
    with pytest.raises(error, match=match):
        main(tiny_args + extra)


@pytest.mark.parametrize(
    "extra, error, match",
    [
        (["--partition.init_args.alpha", "0"], ValueError, "alpha"),
        (["--fed.fraction", "1.5"], ValueError, "fed.fraction"),
        (["--fed.fraction", "0"], ValueError, "fed.fraction"),
        (["--fed.clients_per_round", "9"], ValueError, "fed.clients_per_round"),
        (["--client.optimizer", "rmsprop"], ValueError, "client.optimizer.*sgd.*adam"),
        (["--client.lr", "-1"], ValueError, "client.lr"),
        (["--data", "fedsim.data.NoSuchData"], ArgumentError, "data"),
        (["--model", "fedsim.models.NoSuchNet"], ArgumentError, "model"),
        (["--model.init_args.num_classes", "7"], ValueError, "num_classes"),
        (["--logger.mode", "sometimes"], ValueError, "logger.mode"),
        (["--threads", "0"], ValueError, "threads"),
        (["--fed.num_clients", "5000"], ValueError, r"fed\.num_clients"),
        (["--fed.aux_per_class", "100000"], ValueError, "aux_per_class"),
    ],
)
def test_invalid_values_name_the_field(tiny_args, extra, error, match):
    _fails(tiny_args, extra, error, match)


def test_missing_dataset_files_offline_say_where_to_put_them(tiny_args, tmp_path):
    args = ["--data", "fedsim.data.MNIST", "--data.data_dir", str(tmp_path / "nowhere")]
    _fails(tiny_args, args, FileNotFoundError, "data.data_dir.*download")


def test_resume_path_that_does_not_exist(tiny_args, tmp_path):
    _fails(tiny_args, ["--resume", str(tmp_path / "missing.ckpt")], FileNotFoundError, "resume")


def test_resume_from_a_corrupt_checkpoint(tiny_args, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    _fails(tiny_args, ["--resume", str(bad)], ValueError, "resume.*corrupt")


def test_resume_from_a_checkpoint_of_another_model(tiny_args, tmp_path):
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"global_params": torch.zeros(3), "theta0": torch.zeros(3), "round": 1}, wrong)
    _fails(tiny_args, ["--resume", str(wrong)], ValueError, "resume.*parameters")


@pytest.mark.parametrize("rule", [["fedsim.aggregators.Krum", "--aggregator.f", "2"],
                                  ["fedsim.aggregators.Bulyan", "--aggregator.f", "1"],
                                  ["fedsim.aggregators.RLR", "--aggregator.threshold", "6"]])
def test_rule_that_needs_more_clients_than_a_cohort_fails_before_training(tiny_args, tmp_path, rule):
    _fails(tiny_args, ["--aggregator", *rule], ValueError, "aggregator.*fed.cohort_size is 5")
    assert not (tmp_path / "run" / "metrics.csv").exists()
