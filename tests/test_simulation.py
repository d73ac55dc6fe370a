"""End-to-end invariants of the simulator: outputs, resume == uninterrupted, 2 processes == 1."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from fedsim.callbacks import Callback
from fedsim.cli import execute, main, prepare
from fedsim.simulation import sample_cohort

from conftest import ROOT, TINY


def _final(run_dir):
    return torch.load(run_dir / "final_model.pt", weights_only=True)["params"]


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["train_loss"]]  # training rounds only


def test_run_writes_every_output_and_learns(tiny_args, tmp_path):
    summary = main(tiny_args)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "summary.json", "final_model.pt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert {"acc", "loss", "aux_acc", "round_seconds", "train_loss", "class_acc/0"} <= set(rows[0])
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["rounds"] == 3 and on_disk["trained"]["acc"] == pytest.approx(summary["trained"]["acc"])
    assert summary["trained"]["acc"] > 0.5  # 3 rounds of a small MLP on real digits; chance is 0.1
    assert len(summary["trained"]["per_class_acc"]) == 10
    assert summary["final"] == {**summary["trained"], "model": "trained"}  # no post-training defense


def test_cohorts_are_pure_functions_of_seed_and_round():
    assert sample_cohort(1, 4, 100, 10) == sample_cohort(1, 4, 100, 10)
    assert sample_cohort(1, 4, 100, 10) != sample_cohort(1, 5, 100, 10)
    assert sample_cohort(1, 4, 100, 10) != sample_cohort(2, 4, 100, 10)
    cohort = sample_cohort(3, 0, 100, 10)
    assert cohort == sorted(set(cohort)) and len(cohort) == 10


class _Crash(Callback):
    def on_round_end(self, fabric, simulation, round, metrics):
        if round == 1:
            raise RuntimeError("simulated crash after round 1")


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    args = ["--config", str(TINY), "--fed.rounds", "4"]
    main(args + ["--run_dir", str(tmp_path / "full")])

    parser, cfg, init = prepare(args + ["--run_dir", str(tmp_path / "crashed")])
    init.callbacks = [_Crash()]
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(parser, cfg, init)
    ckpt = torch.load(tmp_path / "crashed/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["round"] == 2
    main(args + ["--run_dir", str(tmp_path / "crashed"), "--resume", "auto"])

    assert torch.equal(_final(tmp_path / "full"), _final(tmp_path / "crashed"))
    assert [r["round"] for r in _rows(tmp_path / "crashed")] == ["0", "1", "2", "3"]
    assert _rows(tmp_path / "crashed")[3]["acc"] == _rows(tmp_path / "full")[3]["acc"]


def test_resume_refuses_a_different_trajectory_but_allows_more_rounds(tmp_path):
    run = ["--config", str(TINY), "--run_dir", str(tmp_path / "r")]
    main(run + ["--fed.rounds", "2"])
    with pytest.raises(ValueError, match=r"resume: checkpoint .* different configuration of client\.lr "
                                         r"\(client\.lr: checkpoint 0\.05, now 0\.2\)"):
        main(run + ["--fed.rounds", "3", "--resume", "auto", "--client.lr", "0.2"])
    summary = main(run + ["--fed.rounds", "3", "--fed.eval_every", "3", "--resume", "auto"])  # more rounds: fine
    assert summary["rounds"] == 3
    ckpt = torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["fingerprint"]["client"]["lr"] == 0.05 and "rounds" not in ckpt["fingerprint"]["fed"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fabric_run(*args):
    """`fabric run` on 2 CPU processes, on a fresh port (a port still held by an earlier run
    would make the rendezvous fail)."""
    fabric_cli = [sys.executable, "-c", "from lightning.fabric.cli import _main; _main()"]
    return _cli(*fabric_cli, "run", "--accelerator", "cpu", "--devices", "2", "--main_port", str(_free_port()),
                "launch/train.py", *args)


def _cli(*args, env=None):
    env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    env.pop("LT_CLI_USED", None)
    done = subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # keep the lines that explain a failure (the progress bars would push them out of the message)
    done.stderr = "\n".join(line for line in done.stderr.splitlines() if "rounds:" not in line)
    return done


TIMINGS = {"seconds", "seconds_vs_training", "train_seconds", "round_seconds", "provenance"}


def _numbers(tree, prefix=""):
    """Every number (and string) in a summary, by dotted key, timings left out."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            if key not in TIMINGS:
                out.update(_numbers(value, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(tree, list):
        out = {}
        for i, value in enumerate(tree):
            out.update(_numbers(value, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def test_two_processes_give_exactly_the_numbers_of_one_with_default_settings(tmp_path):
    """Default threads: every summary.json number (FLAIN block included), the final model's bits,
    every metrics.csv value and rounds.jsonl are the same for 1 process and `fabric run --devices 2`."""
    attack = ["--config", str(TINY.parent / "badnets.yaml")]
    one = _cli(sys.executable, "launch/train.py", "--config", str(TINY), *attack, "--devices", "1",
               "--run_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _fabric_run("--config", str(TINY), *attack, "--run_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert torch.equal(_final(tmp_path / "one"), _final(tmp_path / "two"))
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    numbers = [_numbers(s) for s in summaries]
    assert numbers[0] == numbers[1]
    assert "flain.k" in numbers[0] and "trained.loss" in numbers[0] and "flain.asr_after" in numbers[0]
    prov = [s["provenance"] for s in summaries]
    assert [p["world_size"] for p in prov] == [1, 2] and prov[0]["config_sha256"] == prov[1]["config_sha256"]
    assert prov[0]["threads_per_process"] == 1 and prov[0]["start"] <= prov[0]["end"]
    assert prov[0]["hardware"] == prov[1]["hardware"] and prov[0]["hardware"]["gpu"] is None
    assert prov[0]["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    rows = [_rows(tmp_path / d) for d in ("one", "two")]
    for a, b in zip(*rows):
        assert {k: v for k, v in a.items() if k != "round_seconds"} == \
            {k: v for k, v in b.items() if k != "round_seconds"}
        assert a["malicious_in_cohort"] == "2"
    records = (tmp_path / "one" / "rounds.jsonl").read_text()
    assert records == (tmp_path / "two" / "rounds.jsonl").read_text()
    assert all(len(json.loads(line)["malicious"]) == 2 for line in records.splitlines())


def test_an_error_on_the_coordinator_stops_every_rank_instead_of_hanging(tmp_path):
    """FL-pruning with more voters than auxiliary samples fails inside repair(), on rank 0 only."""
    broken = '[{"class_path": "fedsim.repair.FLPruning", "init_args": {"layer": "fc1", "num_voters": 1000}}]'
    done = _fabric_run("--config", str(TINY), "--fed.rounds", "1", "--callbacks", broken,
                       "--run_dir", str(tmp_path / "x"))
    assert done.returncode != 0
    assert "num_voters" in done.stderr
