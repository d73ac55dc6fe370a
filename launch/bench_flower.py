"""Wall time of the same FedAvg workloads in fedsim and in Flower's Simulation Engine (issue 6).

    python launch/bench_flower.py --setup     # once: creates .bench-venv (flwr[simulation] 1.42 + Ray)
    python launch/bench_flower.py [--workloads w_cnn w_overhead] [--venv .bench-venv] [--cpus N]
                                  [--ours 1x2 1x1 2x1] [--json results.json]

Flower lives only in its own venv, never in fedsim's dependencies; --setup runs
``python3 -m venv .bench-venv && .bench-venv/bin/pip install "flwr[simulation]==1.42.*" torch==2.14.1
torchvision==0.29.1``. Workloads (configs/bench/*.yaml; FedAvg of McMahan et al., AISTATS 2017):

- W-CNN: 100 clients x 600 MNIST samples, 10 per round, 5 rounds, the FLAIN reference MNIST CNN
  (Ding, Yang, Huang, arXiv 2408.08655), SGD lr 0.01, batch 64, 1 local epoch;
- W-overhead: 1,000 clients x 50 samples, 50 per round, 30 rounds, logistic regression.

Both sides get the same workload from our YAML: this script instantiates the config exactly as
our CLI does (same seed, so the same initial model) and writes a spec file with the model class,
its initial state_dict, the per-client index lists of our IID partition and the hyperparameters;
launch/flower_workloads.py trains Flower's clients from it. After our run, the initial model our
CLI saved (theta0 in final_model.pt) is compared with the spec's. Threads are set explicitly:
Flower gets ``--cpus`` Ray CPUs with ``num_cpus: 1`` per client (one torch thread per Ray worker);
ours runs once per ``--ours`` entry PxT = P processes (``fabric run`` when P > 1) x T threads,
by default 1x<cpus> and 1x1. Everything runs as subprocesses, one after the other, on this machine.

Printed, measured only: end-to-end wall time (process start to exit) and round-loop time (ours:
sum of metrics.csv round_seconds; Flower: the strategy's rounds, see flower_workloads.py), the
samples/s of each (trained samples = rounds x cohort x samples per client) and of rounds 2..R
(Flower's first round includes starting its Ray workers), final test accuracy (a sanity check
that both trained the same thing), and the speed-ups (Flower's time / ours).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {"w_cnn": ("W-CNN", ROOT / "configs/bench/w_cnn.yaml"),
             "w_overhead": ("W-overhead", ROOT / "configs/bench/w_overhead.yaml")}
FLOWER_PINS = ["flwr[simulation]==1.42.*", "torch==2.14.1", "torchvision==0.29.1"]


@dataclass
class Timing:
    """One side's measurement of one workload."""

    side: str
    wall_s: float  # process start to exit
    round_s: list[float]  # seconds of each round
    samples: int  # trained samples: rounds x cohort x samples per client
    final_acc: float

    @property
    def loop_s(self) -> float:
        return sum(self.round_s)

    @property
    def warm_s(self) -> float:
        """Rounds 2..R: without the first round's warm-up (Flower starts its Ray workers there)."""
        return sum(self.round_s[1:])

    def rate(self, seconds: float) -> float:
        return self.samples / seconds

    def warm_rate(self) -> float:
        rounds = len(self.round_s)
        return self.samples * (rounds - 1) / rounds / self.warm_s if rounds > 1 else float("nan")


def client_index_matrix(parts: list[Tensor]) -> Tensor:
    """Stacks per-client index lists into ``int64 [num_clients, n]``; all clients must hold n samples."""
    sizes = {len(p) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"partition: the benchmark needs equal client sizes, got sizes {sorted(sizes)}")
    return torch.stack([p.long().cpu() for p in parts])


def read_round_seconds(metrics_csv: Path) -> list[float]:
    """The ``round_seconds`` column of our metrics.csv, one value per round."""
    with open(metrics_csv, newline="") as f:
        return [float(row["round_seconds"]) for row in csv.DictReader(f)]


def our_args(config: Path, data_dir: str) -> list[str]:
    """CLI arguments of our run: evaluation and checkpoint only once, at the end."""
    return ["--config", str(config), "--data.init_args.data_dir", data_dir, "--fed.checkpoint_every", "0"]


def build_spec(args: list[str], cpus: int) -> dict:
    """Instantiates our config like the CLI does and returns what Flower needs to train the same."""
    from fedsim.cli import prepare
    from fedsim.data import build_federated

    _, cfg, init = prepare(args)
    fed, client = init.fed, init.client
    if client.optimizer != "sgd" or client.momentum or client.weight_decay:
        raise ValueError("client: the Flower side implements plain SGD only (optimizer sgd, no momentum/decay)")
    if fed.aux_per_class:  # the aux set would be cut out of the pool and shift every index
        raise ValueError(f"fed.aux_per_class must be 0 for the benchmark, got {fed.aux_per_class}")
    splits = init.data.load()
    data = build_federated(splits, init.partition, fed.num_clients, 0, cfg.seed)
    kwargs = cfg.model.init_args.as_dict() if cfg.model.get("init_args") else {}
    return {"model_class": type(init.model).__name__, "model_kwargs": kwargs,
            "state_dict": {k: v.clone() for k, v in init.model.state_dict().items()},
            "client_indices": client_index_matrix(data.client_indices), "num_clients": fed.num_clients,
            "clients_per_round": fed.cohort_size, "rounds": fed.rounds, "lr": client.lr,
            "batch_size": client.batch_size, "epochs": client.epochs, "seed": cfg.seed,
            "data_dir": str(Path(init.data.data_dir).resolve()), "mean": splits.mean[0], "std": splits.std[0],
            "ray_cpus": cpus, "threads_per_client": 1}


def trained_samples(spec: dict) -> int:
    return spec["rounds"] * spec["clients_per_round"] * spec["client_indices"].shape[1]


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


def parse_layout(text: str) -> tuple[int, int]:
    """``"PxT"`` -> (P processes, T torch threads per process), both >= 1."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"--ours entries must look like PxT with P, T >= 1 (e.g. 1x2, 2x1), got {text!r}")
    return int(parts[0]), int(parts[1])


def our_command(args: list[str], run_dir: Path, processes: int, threads: int) -> list[str]:
    """Our CLI as a subprocess: one process, or ``fabric run --devices P`` (CPU) for P > 1."""
    train = ["launch/train.py", *args, "--run_dir", str(run_dir), "--threads", str(threads)]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-c", "from lightning.fabric.cli import _main; _main()", "run",
            "--accelerator", "cpu", "--devices", str(processes), *train]


def run_ours(args: list[str], run_dir: Path, spec: dict, layout: str) -> Timing:
    processes, threads = parse_layout(layout)
    env = {**os.environ, "WANDB_MODE": "offline"}
    wall = _timed(our_command(args, run_dir, processes, threads), env)
    summary = json.loads((run_dir / "summary.json").read_text())
    check_initial_weights(run_dir / "final_model.pt", spec)
    rounds = read_round_seconds(run_dir / "metrics.csv")
    return Timing(f"fedsim {processes}x{threads}", wall, rounds, trained_samples(spec), summary["trained"]["acc"])


def check_initial_weights(final_model: Path, spec: dict) -> None:
    """Our run's theta0 must equal the initial weights handed to Flower."""
    from fedsim import models
    from fedsim.params import ParamLayout

    model = getattr(models, spec["model_class"])(**spec["model_kwargs"])
    model.load_state_dict(spec["state_dict"])
    theta0 = torch.load(final_model, weights_only=False)["theta0"]
    if not torch.equal(ParamLayout(model).flatten(model), theta0):
        raise RuntimeError("initial weights differ between our run and the Flower spec")


def run_flower(python: Path, spec_path: Path, out: Path, samples: int) -> Timing:
    wall = _timed([str(python), "launch/flower_workloads.py", "--spec", str(spec_path), "--out", str(out)],
                  dict(os.environ))
    result = json.loads(out.read_text())
    if len(set(result["replies_per_round"])) != 1:
        raise RuntimeError(f"Flower aggregated a varying number of clients: {result['replies_per_round']}")
    return Timing(f"flower {spec_cpus(spec_path)}x1", wall, result["round_seconds"], samples, result["final_acc"])


def spec_cpus(spec_path: Path) -> int:
    return torch.load(spec_path, weights_only=False)["ray_cpus"]


def report(name: str, ours: list[Timing], flower: Timing) -> list[str]:
    """Table rows of one workload, then one speed-up line (Flower time / our time) per run of ours."""
    lines = [f"{name:<11} {t.side:<11} {t.wall_s:8.1f} {t.loop_s:8.1f} {t.rate(t.wall_s):10.0f} "
             f"{t.rate(t.loop_s):10.0f} {t.warm_rate():10.0f} {t.final_acc:8.4f}" for t in (*ours, flower)]
    lines += [f"{name:<11} speed-up {t.side} vs {flower.side}: end-to-end {flower.wall_s / t.wall_s:.2f}x, "
              f"round loop {flower.loop_s / t.loop_s:.2f}x, rounds 2..R {flower.warm_s / t.warm_s:.2f}x" for t in ours]
    return lines


def setup_venv(venv: Path) -> None:
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", *FLOWER_PINS], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--venv", type=Path, default=ROOT / ".bench-venv", help="the Flower-only venv")
    parser.add_argument("--setup", action="store_true", help="create --venv with Flower, then exit")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                        help="Flower: Ray CPUs, one client (one torch thread) per CPU")
    parser.add_argument("--ours", nargs="+", default=None,
                        help="our runs as PROCESSESxTHREADS (default: 1x<cpus> 1x1; 2x1 mirrors Flower's 2 workers)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    if args.setup:
        return setup_venv(args.venv)
    python = args.venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"error: no Flower venv at {args.venv}; run: python launch/bench_flower.py --setup")
    layouts = args.ours or [f"1x{args.cpus}", "1x1"]
    for layout in layouts:
        parse_layout(layout)  # fail before any run
    torch.set_num_threads(args.cpus)
    work = Path(tempfile.mkdtemp(prefix="fedsim-vs-flower-"))
    print(f"{'workload':<11} {'side PxT':<11} {'wall s':>8} {'loop s':>8} {'smp/s wall':>10} {'smp/s loop':>10} "
          f"{'smp/s 2..R':>10} {'acc':>8}   (PxT = processes x threads; {os.cpu_count()} cores)")
    results = {}
    for key in args.workloads:
        name, config = WORKLOADS[key]
        cli_args = our_args(config, args.data_dir)
        spec = build_spec(cli_args, args.cpus)
        torch.save(spec, work / f"{key}.spec.pt")
        ours = [run_ours(cli_args, work / f"{key}-ours-{layout}", spec, layout) for layout in layouts]
        flower = run_flower(python, work / f"{key}.spec.pt", work / f"{key}-flower.json", trained_samples(spec))
        print("\n".join(report(name, ours, flower)), flush=True)
        results[key] = [{**asdict(t), "loop_s": t.loop_s, "warm_s": t.warm_s} for t in (*ours, flower)]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
