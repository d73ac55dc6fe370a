"""The pieces of the fedsim-vs-Flower benchmark that need no flwr (launch/bench_flower.py and the
torch-only helpers of launch/flower_workloads.py)."""

import importlib.util
import math
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load("bench_flower")
flower = _load("flower_workloads")
DATA = ROOT.parent / "shared" / "data" / "MNIST" / "raw"


def test_client_index_matrix_stacks_equal_clients_in_order():
    # Prepare
    parts = [torch.tensor([0, 2]), torch.tensor([1, 3])]
    # Execute
    matrix = bench.client_index_matrix(parts)
    # Assert
    assert matrix.dtype == torch.int64
    assert matrix.tolist() == [[0, 2], [1, 3]]


def test_client_index_matrix_rejects_unequal_clients():
    with pytest.raises(ValueError, match=r"equal client sizes, got sizes \[1, 2\]"):
        bench.client_index_matrix([torch.tensor([0]), torch.tensor([1, 2])])


def test_read_round_seconds_returns_the_column(tmp_path):
    # Prepare
    path = tmp_path / "metrics.csv"
    path.write_text("round,train_loss,round_seconds,acc\n0,2.3,1.5,\n1,2.1,2.25,0.9\n")
    # Execute / Assert
    assert bench.read_round_seconds(path) == [1.5, 2.25]


def test_round_durations_are_gaps_between_evaluate_calls():
    assert flower.round_durations([10.0, 10.5, 12.0]) == [0.5, 1.5]
    assert flower.round_durations([3.0]) == []


def test_report_gives_rates_and_speed_up():
    # Prepare: Flower takes 4x the wall time and 2x the round time of ours
    ours = bench.Timing("fedsim 1x2", wall_s=10.0, round_s=[2.0, 1.0, 2.0], samples=1200, final_acc=0.9)
    theirs = bench.Timing("flower 2x1", wall_s=40.0, round_s=[7.0, 2.0, 1.0], samples=1200, final_acc=0.8)
    # Execute
    lines = bench.report("W-X", [ours], theirs)
    # Assert: ours 1200/10 = 120 and 1200/5 = 240 samples/s; rounds 2..R: 800 samples in 3 s
    assert lines[0].split()[5:8] == ["120", "240", "267"]
    assert lines[1].split()[5:8] == ["30", "120", "267"]
    assert lines[2].endswith("fedsim 1x2 vs flower 2x1: end-to-end 4.00x, round loop 2.00x, rounds 2..R 1.00x")


@pytest.mark.parametrize("text, expected", [("1x2", (1, 2)), ("2X1", (2, 1))])
def test_parse_layout_reads_processes_and_threads(text, expected):
    assert bench.parse_layout(text) == expected


@pytest.mark.parametrize("text", ["2", "0x1", "1x", "axb"])
def test_parse_layout_rejects_malformed(text):
    with pytest.raises(ValueError, match="PxT"):
        bench.parse_layout(text)


def test_our_command_uses_fabric_run_only_for_several_processes(tmp_path):
    one = bench.our_command(["--config", "c.yaml"], tmp_path, 1, 2)
    two = bench.our_command(["--config", "c.yaml"], tmp_path, 2, 1)
    assert one[1:] == ["launch/train.py", "--config", "c.yaml", "--run_dir", str(tmp_path), "--threads", "2"]
    assert two[4:8] == ["--accelerator", "cpu", "--devices", "2"] and two[-2:] == ["--threads", "1"]


def test_local_fit_one_sgd_step_matches_hand_computation():
    # Prepare: zero weights -> softmax [0.5, 0.5]; x = [1, 2], label 0, lr 0.1
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    # Execute
    loss = flower.local_fit(model, x, y, lr=0.1, batch_size=64, epochs=1, gen=torch.Generator().manual_seed(0))
    # Assert: grad W = (p - onehot) x^T = [[-0.5, -1], [0.5, 1]]; W = -0.1 * grad
    assert loss == pytest.approx(math.log(2))
    assert torch.allclose(model.weight, torch.tensor([[0.05, 0.1], [-0.05, -0.1]]))
    assert torch.allclose(model.bias, torch.tensor([0.05, -0.05]))


@pytest.mark.parametrize("override, field", [(["--fed.aux_per_class", "1"], "fed.aux_per_class"),
                                             (["--client.momentum", "0.9"], "plain SGD")])
def test_build_spec_rejects_what_flower_side_cannot_mirror(override, field):
    args = bench.our_args(bench.WORKLOADS["w_overhead"][1], str(DATA.parents[1])) + override
    with pytest.raises(ValueError, match=field):
        bench.build_spec(args, 1)


@pytest.mark.skipif(not DATA.is_dir(), reason="full MNIST not found beside the repo (shared/data)")
def test_w_overhead_spec_is_our_partition_and_our_initial_model():
    # Prepare
    from fedsim.models import LogReg
    from fedsim.runtime.seeding import derive_seed

    args = bench.our_args(bench.WORKLOADS["w_overhead"][1], str(DATA.parents[1]))
    # Execute
    spec = bench.build_spec(args, 2)
    # Assert: 1,000 clients x 50 samples, a partition of the first 50,000 training images
    idx = spec["client_indices"]
    assert idx.shape == (1000, 50)
    assert torch.equal(idx.flatten().sort().values, torch.arange(50_000))
    assert (spec["clients_per_round"], spec["rounds"], bench.trained_samples(spec)) == (50, 30, 75_000)
    # the CLI seeds the global RNG from (seed, "init") before building the model
    torch.manual_seed(derive_seed(0, "init"))
    expected = LogReg(num_classes=10, in_features=784).state_dict()
    assert spec["model_class"] == "LogReg" and spec["state_dict"].keys() == expected.keys()
    assert all(torch.equal(spec["state_dict"][k], expected[k]) for k in expected)
