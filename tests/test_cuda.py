"""The CUDA path: training, attacks, aggregation rules, evaluation, FLAIN and checkpoints on a GPU.

Every test is marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is false (CI, the
2-core development machine), so the file is collected and skipped cleanly there. On a GPU:

    python -m pytest -m cuda tests/test_cuda.py

(``launch/gpu_check.py`` runs exactly this; docs/gpu.md says how to run it on the lent H200.)
The runs are the tests' tiny federation (``tests/configs/tiny.yaml``: TinyNet, 8 clients, 5 per
round, embedded MNIST) on ``--accelerator cuda --devices 1``. GPU and CPU kernels round floats
differently, so CUDA and CPU runs are compared exactly only where the code promises it (cohorts,
attackers, the initial model, what a checkpoint holds) and within tolerances elsewhere.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fedsim.callbacks import Callback
from fedsim.cli import execute, main, prepare

from conftest import ROOT, TINY

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (docs/gpu.md)"),
]

CUDA = ["--accelerator", "cuda", "--devices", "1"]
CPU = ["--accelerator", "cpu", "--devices", "1"]
BADNETS = ["--config", str(TINY.parent / "badnets.yaml")]  # BadNets + scaling x2 from 40%, FLAIN on fc2


def _args(run_dir, *extra):
    return ["--config", str(TINY), "--run_dir", str(run_dir), *extra]


def _records(run_dir):
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("round", "clients", "malicious")} for r in map(json.loads, lines)]


def _rows(run_dir):
    if not (run_dir / "metrics.csv").exists():  # a resumed, finished run without callbacks logs nothing
        return []
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["train_loss"]]  # training rounds only


def _saved(run_dir, name="final_model.pt"):
    return torch.load(run_dir / name, map_location="cpu", weights_only=True)


class _Where(Callback):
    """Records where the simulation keeps its model, data and global parameters."""

    def __init__(self):
        self.seen = {}

    def on_round_end(self, fabric, simulation, round, metrics):
        self.seen = {
            "fabric": fabric.device.type,
            "simulation": simulation.device.type,
            "model": next(simulation.model.parameters()).device.type,
            "global_params": simulation.global_params.device.type,
            "train_x": simulation.data.train.x.device.type,
            "test_x": simulation.data.test.x.device.type,
        }


def _run_with_probe(args):
    parser, cfg, init = prepare(args)
    probe = _Where()
    init.callbacks = [*(init.callbacks or []), probe]
    return execute(parser, cfg, init), probe.seen


def test_a_training_round_runs_on_the_gpu(tmp_path):
    summary, seen = _run_with_probe(_args(tmp_path / "run", *CUDA, "--fed.rounds", "2"))
    assert set(seen.values()) == {"cuda"}, seen
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "rounds.jsonl", "summary.json", "final_model.pt",
                 "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert summary["rounds"] == 2 and summary["trained"]["acc"] > 0.3  # 2 rounds of a tiny MLP; chance 0.1
    for name in ("final_model.pt", "checkpoints/last.ckpt"):  # files hold CPU tensors: they load anywhere
        state = torch.load(run / name, weights_only=True)  # no map_location: tensors keep their saved device
        assert all(v.device.type == "cpu" for v in state.values() if isinstance(v, torch.Tensor)), name


def test_accelerator_auto_picks_the_gpu(tmp_path):
    _, seen = _run_with_probe(_args(tmp_path / "run", "--fed.rounds", "1"))
    assert seen["simulation"] == "cuda" and seen["global_params"] == "cuda"


def test_cuda_and_cpu_give_the_same_cohorts_attackers_and_initial_model(tmp_path):
    gpu = main(_args(tmp_path / "gpu", *CUDA, *BADNETS))
    cpu = main(_args(tmp_path / "cpu", *CPU, *BADNETS))
    assert _records(tmp_path / "gpu") == _records(tmp_path / "cpu")
    assert any(r["malicious"] for r in _records(tmp_path / "gpu"))
    assert torch.equal(_saved(tmp_path / "gpu")["theta0"], _saved(tmp_path / "cpu")["theta0"])
    # float rounding differs between the devices' kernels, so the trajectories are close, not equal
    assert abs(gpu["trained"]["acc"] - cpu["trained"]["acc"]) < 0.05
    assert abs(gpu["trained"]["asr"] - cpu["trained"]["asr"]) < 0.15
    gap = (_saved(tmp_path / "gpu", "checkpoints/last.ckpt")["global_params"]
           - _saved(tmp_path / "cpu", "checkpoints/last.ckpt")["global_params"]).abs().max().item()
    assert gap < 1e-2, gap


def test_evaluation_on_the_gpu_matches_the_cpu_for_the_same_model(tmp_path):
    """A finished CUDA run, resumed on the CPU with no round left, only evaluates theta_T again."""
    gpu = main(_args(tmp_path / "gpu", *CUDA, *BADNETS, "--callbacks", "null"))
    again = main(_args(tmp_path / "cpu_eval", *CPU, *BADNETS, "--callbacks", "null",
                       "--resume", str(tmp_path / "gpu" / "checkpoints" / "last.ckpt")))
    assert not _rows(tmp_path / "cpu_eval")  # no round was trained
    for key in ("acc", "aux_acc", "asr"):  # 300 test digits, 100 aux: a near-tie argmax or two at most
        assert abs(gpu["trained"][key] - again["trained"][key]) <= 0.02, key
    assert gpu["trained"]["loss"] == pytest.approx(again["trained"]["loss"], rel=1e-4)
    assert gpu["trained"]["per_class_acc"] == pytest.approx(again["trained"]["per_class_acc"], abs=0.05)


def test_flain_repairs_on_the_gpu_like_on_the_cpu(tmp_path):
    gpu = main(_args(tmp_path / "gpu", *CUDA, *BADNETS))
    block = gpu["flain"]
    assert block["asr_after"] <= block["asr_before"]
    assert 0 < block["flipped_neurons"] <= block["total_neurons"] == 16
    assert (tmp_path / "gpu" / "flain_repaired.pt").is_file()
    assert gpu["final"]["model"] == "flain" and gpu["final"]["asr"] == pytest.approx(block["asr_after"])
    # FLAIN on the CPU from the very same theta_T (a finished checkpoint, no round trained)
    cpu = main(_args(tmp_path / "cpu", *CPU, *BADNETS, "--resume", str(tmp_path / "gpu" / "checkpoints" / "last.ckpt")))
    assert cpu["flain"]["asr_before"] == pytest.approx(block["asr_before"], abs=0.02)
    assert abs(cpu["flain"]["acc_after"] - block["acc_after"]) < 0.03
    assert abs(cpu["flain"]["asr_after"] - block["asr_after"]) < 0.1
    assert abs(cpu["flain"]["flipped_neurons"] - block["flipped_neurons"]) <= 4  # of 16


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu_and_back(tmp_path):
    full = main(_args(tmp_path / "full", *CUDA, *BADNETS, "--fed.rounds", "4"))
    run = tmp_path / "moved"
    main(_args(run, *CUDA, *BADNETS, "--fed.rounds", "2"))
    ckpt = _saved(run, "checkpoints/last.ckpt")
    assert ckpt["round"] == 2 and ckpt["global_params"].device.type == "cpu"
    assert ckpt["theta0"].device.type == "cpu" and ckpt["prev_global"].device.type == "cpu"
    # on to the CPU for one round ...
    parser, cfg, init = prepare(_args(run, *CPU, *BADNETS, "--fed.rounds", "3", "--resume", "auto"))
    probe = _Where()
    init.callbacks = [*(init.callbacks or []), probe]
    execute(parser, cfg, init)
    assert probe.seen["global_params"] == "cpu"
    assert _saved(run, "checkpoints/last.ckpt")["round"] == 3
    # ... and back to the GPU for the last one
    summary, seen = _run_with_probe(_args(run, *CUDA, *BADNETS, "--fed.rounds", "4", "--resume", "auto"))
    assert seen["global_params"] == "cuda"
    assert summary["rounds"] == 4
    assert [r["round"] for r in _rows(run)] == ["0", "1", "2", "3"]
    assert _records(run) == _records(tmp_path / "full")  # same cohorts and attackers as uninterrupted
    assert torch.equal(_saved(run)["theta0"], _saved(tmp_path / "full")["theta0"])
    assert abs(summary["trained"]["acc"] - full["trained"]["acc"]) < 0.05
    assert "flain" in summary


def test_a_gpu_checkpoint_resumes_on_the_gpu_exactly(tmp_path):
    """Resume on the same device gives the uninterrupted run's model (TinyNet: no cuDNN
    nondeterminism; the cuBLAS kernels are deterministic for a fixed shape)."""
    main(_args(tmp_path / "full", *CUDA, *BADNETS, "--callbacks", "null", "--fed.rounds", "4"))
    main(_args(tmp_path / "cut", *CUDA, *BADNETS, "--callbacks", "null", "--fed.rounds", "2"))
    main(_args(tmp_path / "cut", *CUDA, *BADNETS, "--callbacks", "null", "--fed.rounds", "4", "--resume", "auto"))
    diff = (_saved(tmp_path / "full")["params"] - _saved(tmp_path / "cut")["params"]).abs().max().item()
    assert diff <= 1e-6, diff


RULES = {
    "fedavg": ["fedsim.aggregators.FedAvg"],
    "krum": ["fedsim.aggregators.Krum", "--aggregator.f", "1"],
    "multikrum": ["fedsim.aggregators.MultiKrum", "--aggregator.f", "1"],
    "median": ["fedsim.aggregators.Median"],
    "trimmed_mean": ["fedsim.aggregators.TrimmedMean", "--aggregator.beta", "0.2"],
    "geomed": ["fedsim.aggregators.GeometricMedian"],
    "bulyan": ["fedsim.aggregators.Bulyan", "--aggregator.f", "1", "--fed.clients_per_round", "8"],
    "clipping_dp": ["fedsim.aggregators.NormClipping", "--aggregator.max_norm", "1", "--aggregator.noise_std", "0.001"],
    "rlr": ["fedsim.aggregators.RLR", "--aggregator.threshold", "2"],
    "fltrust": ["fedsim.aggregators.FLTrust"],
    "foolsgold": ["fedsim.aggregators.FoolsGold"],
    "flame": ["fedsim.aggregators.FLAME"],
    "multimetrics": ["fedsim.aggregators.MultiMetrics"],
    "deepsight": ["fedsim.aggregators.DeepSight", "--aggregator.num_samples", "256"],
}


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_every_aggregation_rule_runs_on_the_gpu(tmp_path, rule):
    summary = main(_args(tmp_path / "run", *CUDA, *BADNETS, "--callbacks", "null", "--fed.rounds", "2",
                         "--aggregator", *rule))
    assert summary["rounds"] == 2
    assert torch.isfinite(_saved(tmp_path / "run")["params"]).all()
    assert 0 <= summary["trained"]["acc"] <= 1


ATTACKS = ["badnets", "blended", "dba", "edge_case", "label_flip", "neurotoxin", "scaling_pgd"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_overlay_runs_on_the_gpu(tmp_path, attack):
    overlay = ROOT / "configs" / "attacks" / f"{attack}.yaml"
    # both rounds attack (scaling_pgd's overlay is single-shot in rounds 5 and 10)
    summary = main(_args(tmp_path / "run", *CUDA, "--config", str(overlay), "--fed.rounds", "2",
                         "--attack.schedule.rounds", "[0, 1]", "--attack.schedule.mcr", "0.4"))
    assert all(r["malicious"] for r in _records(tmp_path / "run"))
    assert torch.isfinite(_saved(tmp_path / "run")["params"]).all()
    assert "asr" in summary["trained"]


def test_post_training_defenses_side_by_side_on_the_gpu(tmp_path):
    """The MNIST CNN (cuDNN convolutions, dropout on the GPU) with FLAIN, fine-pruning, FL pruning
    and fine-tuning side by side (configs/defenses/posttrain_side_by_side.yaml)."""
    overlay = ROOT / "configs" / "defenses" / "posttrain_side_by_side.yaml"
    summary = main(_args(tmp_path / "run", *CUDA, *BADNETS, "--config", str(overlay), "--fed.rounds", "2",
                         "--model", "fedsim.models.MnistCNN", "--client.lr", "0.01"))
    for name in ("flain", "fine_pruning", "fl_pruning", "fine_tuning"):
        assert name in summary, name
        assert (tmp_path / "run" / f"{name}_repaired.pt").is_file(), name
        assert 0 <= summary[name]["acc_after"] <= 1, name
    assert torch.isfinite(_saved(tmp_path / "run")["params"]).all()


def test_a_batchnorm_model_trains_and_is_repaired_on_the_gpu(tmp_path):
    """FmnistCNN (conv + BatchNorm): running statistics travel in the update's buffer part and are
    averaged on the GPU; fine-pruning on its last conv zeroes the following BatchNorm's affine."""
    callbacks = [{"class_path": "flain.FLAIN", "init_args": {"plots": False, "apply": False}},
                 {"class_path": "fedsim.repair.FinePruning", "init_args": {"apply": False}}]
    summary = main(_args(tmp_path / "run", *CUDA, *BADNETS, "--fed.rounds", "2", "--model", "fedsim.models.FmnistCNN",
                         "--client.lr", "0.01", "--callbacks", json.dumps(callbacks)))
    assert "flain" in summary and "fine_pruning" in summary
    saved = _saved(tmp_path / "run")
    names = saved["names"]
    assert any("running_mean" in n for n in names)
    assert torch.isfinite(saved["params"]).all()


def test_seeded_global_rng_restores_the_gpu_generator():
    from fedsim.runtime.seeding import seeded_global_rng

    torch.cuda.manual_seed(123)
    before = torch.cuda.get_rng_state()
    with seeded_global_rng(5, "cuda"):
        a = torch.rand(4, device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), before)
    with seeded_global_rng(5, "cuda"):
        b = torch.rand(4, device="cuda")
    assert torch.equal(a, b)  # dropout streams on the GPU depend on the keys only


def test_local_train_on_the_gpu_is_a_pure_function_of_its_inputs():
    from fedsim.clients import ClientConfig, local_train
    from fedsim.models import TinyNet
    from fedsim.params import ParamLayout

    torch.manual_seed(0)
    model = TinyNet().cuda()
    layout = ParamLayout(model)
    theta = layout.flatten(model).clone()
    x, y = torch.rand(96, 1, 28, 28, device="cuda"), torch.randint(0, 10, (96,), device="cuda")
    cfg = ClientConfig(optimizer="adam", lr=0.01, epochs=2, batch_size=32)
    kw = dict(model=model, layout=layout, global_params=theta, x=x, y=y, config=cfg, seed=0, round=3,
              normalize=lambda t: t)
    one, two, other = local_train(**kw, client_id=7), local_train(**kw, client_id=7), local_train(**kw, client_id=8)
    assert one.update.device.type == "cuda"
    assert torch.equal(one.update, two.update)
    assert not torch.equal(one.update, other.update)


def test_vmap_over_clients_matches_the_loop_on_the_gpu():
    """launch/bench_vmap.py's two ways agree on the GPU for LogReg (no dropout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_vmap", ROOT / "launch" / "bench_vmap.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from fedsim.clients import ClientConfig
    from fedsim.models import LogReg
    from fedsim.params import ParamLayout

    torch.manual_seed(0)
    model = LogReg().cuda()
    layout = ParamLayout(model)
    theta = layout.flatten(model).clone()
    xs = [torch.rand(50, 1, 28, 28, device="cuda") for _ in range(6)]
    ys = [torch.randint(0, 10, (50,), device="cuda") for _ in range(6)]
    cfg = ClientConfig(optimizer="sgd", lr=0.01, epochs=1, batch_size=64)
    loop = bench.loop_round(model, layout, theta, xs, ys, cfg, lambda t: t)
    vmapped = bench.vmap_round(model, layout, theta, xs, ys, cfg, lambda t: t)
    assert (loop[:, : layout.num_weights] - vmapped).abs().max().item() < 1e-5
