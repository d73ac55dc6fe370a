"""The Flower side of launch/bench_flower.py: one FedAvg workload on Flower's Simulation Engine.

Runs only in the benchmark's own venv (flwr[simulation] 1.42 with Ray; never a fedsim dependency):

    .bench-venv/bin/python launch/flower_workloads.py --spec SPEC.pt --out RESULT.json

``SPEC.pt`` is written by launch/bench_flower.py from our YAML config, so both sides train the same
workload: the same model class (imported from ``fedsim.models``, which needs only torch), the same
initial ``state_dict``, the same client index lists into the MNIST training split, the same
cohort size, rounds and SGD hyperparameters. Flower uses its current Message API: a ``ClientApp``
whose ``@train`` handler trains in a plain loop on an in-memory slice (MNIST is loaded once per Ray
worker process, not per client), a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` with
``fraction_train = cohort / clients`` and no federated evaluation, started by
``flwr.simulation.run_simulation`` with ``client_resources = {num_cpus: 1}``.

Round time is read from ``evaluate_fn``, which the strategy calls once before round 1 and once after
every round: the gaps between those calls are the rounds (send, client training, aggregation).

Workload of the FedAvg comparison: McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017; model: the FLAIN reference MNIST CNN (Ding, Yang,
Huang, arXiv 2408.08655).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
SPEC_ENV, OUT_ENV = "FEDSIM_BENCH_SPEC", "FEDSIM_BENCH_OUT"
_CACHE: dict = {}  # per process: the spec, the normalised MNIST split, one reusable model


def round_durations(stamps: list[float]) -> list[float]:
    """Seconds of each round from the strategy's evaluate_fn call times (round 0 = before round 1)."""
    return [b - a for a, b in zip(stamps, stamps[1:])]


def local_fit(model: nn.Module, x: Tensor, y: Tensor, lr: float, batch_size: int, epochs: int,
              gen: torch.Generator) -> float:
    """Plain SGD on (x, y): shuffled mini-batches, cross-entropy; returns the last epoch's mean loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total = torch.zeros(())
        for start in range(0, len(y), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
    return float(total) / max(len(y), 1)


def build_model(spec: dict) -> nn.Module:
    """The spec's model class from ``fedsim.models`` (torch only) with the shared initial weights."""
    sys.path.insert(0, str(ROOT))
    from fedsim import models

    model = getattr(models, spec["model_class"])(**spec["model_kwargs"])
    model.load_state_dict(spec["state_dict"], strict=True)
    return model


def load_split(spec: dict, train: bool) -> tuple[Tensor, Tensor]:
    """MNIST (torchvision layout) as normalised float [N, 1, 28, 28] and int64 labels."""
    from torchvision.datasets import MNIST

    ds = MNIST(root=spec["data_dir"], train=train, download=False)
    x = ds.data.unsqueeze(1).float().div_(255.0).sub_(spec["mean"]).div_(spec["std"])
    return x, ds.targets.long()


def _state() -> dict:
    """Loads the spec and the training split once per process (a Ray worker serves many clients)."""
    if not _CACHE:
        spec = torch.load(os.environ[SPEC_ENV], weights_only=False)
        torch.set_num_threads(spec["threads_per_client"])
        _CACHE.update(spec=spec, train=load_split(spec, train=True), model=build_model(spec))
    return _CACHE


def client_app():
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        st = _state()
        spec, model = st["spec"], st["model"]
        pid = int(context.node_config["partition-id"])
        idx = spec["client_indices"][pid]
        x, y = st["train"][0][idx], st["train"][1][idx]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rnd = int(msg.content["config"]["server-round"])
        gen = torch.Generator().manual_seed(spec["seed"] * 1_000_003 + rnd * 100_003 + pid)
        loss = local_fit(model, x, y, spec["lr"], spec["batch_size"], spec["epochs"], gen)
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)})})
        return Message(content=reply, reply_to=msg)

    return app


def server_app():
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    class CountingFedAvg(FedAvg):
        """FedAvg that records how many replies each round aggregated (to check the cohort size)."""

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.replies.append(sum(not m.has_error() for m in replies))
            return super().aggregate_train(server_round, replies)

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        spec = torch.load(os.environ[SPEC_ENV], weights_only=False)
        n, k = spec["num_clients"], spec["clients_per_round"]
        strategy = CountingFedAvg(fraction_train=k / n, fraction_evaluate=0.0, min_train_nodes=k,
                                  min_available_nodes=n)
        strategy.replies = []
        model = build_model(spec)
        stamps: list[float] = []
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=spec["rounds"],
                                evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()))
        model.load_state_dict(result.arrays.to_torch_state_dict())
        out = {"round_seconds": round_durations(stamps), "replies_per_round": strategy.replies,
               "final_acc": test_accuracy(model, spec)}
        Path(os.environ[OUT_ENV]).write_text(json.dumps(out))

    return app


@torch.no_grad()
def test_accuracy(model: nn.Module, spec: dict) -> float:
    """Clean accuracy on the MNIST test split (after training, outside every timing)."""
    x, y = load_split(spec, train=False)
    model.eval()
    hits = sum(int((model(x[s : s + 1000]).argmax(1) == y[s : s + 1000]).sum()) for s in range(0, len(y), 1000))
    return hits / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description="One FedAvg workload on Flower's Simulation Engine.")
    parser.add_argument("--spec", required=True, help="the workload spec written by launch/bench_flower.py")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    # Ray workers inherit this environment; telemetry off (no network here, and it would cost time).
    os.environ.update({SPEC_ENV: str(Path(args.spec).resolve()), OUT_ENV: str(Path(args.out).resolve()),
                       "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0"})
    spec = torch.load(args.spec, weights_only=False)
    from flwr.simulation import run_simulation

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": spec["ray_cpus"], "num_gpus": 0}}
    start = time.perf_counter()
    run_simulation(server_app=server_app(), client_app=client_app(), num_supernodes=spec["num_clients"],
                   backend_config=backend)
    seconds = time.perf_counter() - start
    out = json.loads(Path(args.out).read_text())
    out["simulation_seconds"] = seconds
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    # Run through the importable module, so Ray pickles the apps by reference and each worker keeps
    # one module-level cache (MNIST loaded once per process), not a fresh copy per message.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import flower_workloads

    flower_workloads.main()
