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


# ---------------------------------------------------------------- the console: short messages
import subprocess  # noqa: E402
import sys  # noqa: E402

from conftest import ROOT, TINY  # noqa: E402


def _console(*args, cwd=ROOT):
    env = {"WANDB_MODE": "offline", "FEDSIM_CPU_PROCESSES": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra, expected", [
    (["--config", str(TINY.parent / "badnets.yaml"), "--attack.init_args.data.init_args.poison_fraction", "2.0"],
     "attack: BadNets.poison_fraction must be in [0, 1], got 2.0"),
    (["--callbacks", '[{"class_path": "flain.FLAIN", "init_args": {"tolerance": 3}}]'],
     "callbacks: flain.tolerance must be in [0, 1], got 3"),
    (["--fed.round", "7"], "fed.round"),  # an abbreviation of fed.rounds is refused, not guessed
    (["--accelerator", "tpu"], "accelerator"),
    (["--run_dir", ""], "run_dir must be a folder path"),
])
def test_console_errors_are_at_most_three_lines_without_traceback(tmp_path, extra, expected):
    args = ["--config", str(TINY), "--run_dir", str(tmp_path / "r"), *extra]
    done = _console(*args)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


def test_yaml_errors_name_the_file_and_line_and_empty_overlays_say_so(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("fed:\n  rounds: [\n")
    done = _console("--config", str(TINY), "--config", str(broken))
    assert done.returncode == 2 and f"--config {broken}: YAML syntax error at line" in done.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    done = _console("--config", str(TINY), "--config", str(empty))
    assert done.returncode == 2 and f"--config {empty} is empty" in done.stderr


def test_run_dir_that_is_a_file_or_holds_a_run_fails_before_any_work(tiny_args, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        main(tiny_args[:2] + ["--run_dir", str(a_file), "--fed.rounds", "1"])
    run = tmp_path / "run"
    main(tiny_args + ["--fed.rounds", "1"])
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(ValueError, match="already holds a run.*--resume auto.*--overwrite true"):
        main(tiny_args + ["--fed.rounds", "1"])
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # untouched
    summary = main(tiny_args + ["--fed.rounds", "1", "--overwrite", "true", "--seed", "3"])
    assert summary["provenance"]["seed"] == 3 and not (run / ".lock").exists()


def test_a_refused_resume_leaves_the_run_folder_untouched(tiny_args, tmp_path):
    run = tmp_path / "run"
    main(tiny_args + ["--fed.rounds", "1"])
    config = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match="client.lr"):
        main(tiny_args + ["--fed.rounds", "2", "--resume", "auto", "--client.lr", "0.3"])
    assert (run / "config.yaml").read_text() == config
    main(tiny_args + ["--fed.rounds", "2", "--resume", "auto"])  # the README's resume still works


def test_a_live_lock_refuses_a_second_writer(tiny_args, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(ValueError, match="in use by process"):
            main(tiny_args + ["--fed.rounds", "1"])
    finally:
        sleeper.kill()
        sleeper.wait()
    main(tiny_args + ["--fed.rounds", "1"])  # a dead process's lock is taken over
