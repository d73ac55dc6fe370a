"""Throughput of the simulator's local training vs the fused single-model limit.

    python launch/benchmark.py [--data_dir ../shared/data] [--rounds 5] [--skip_two] [--corun] [--all]

Prints measured figures only. Three measurements on the same machine, same workload (W-CNN:
configs/bench/w_cnn.yaml, 10 clients x 600 full-MNIST samples per round, MnistCNN, SGD, batch 64):

1. fused: one model trained on rounds x 6,000 samples in a plain PyTorch loop (all cores as
   threads of one process; after one warm-up epoch) - the limit the ratios refer to; also with
   one thread, for reference;
2. simulator, 1 process x ``cores`` threads (the default layout before ``threads: 1``);
3. simulator, `fabric run --devices 2` x 1 thread (today's default on 2 cores: ``devices: auto``
   = one single-threaded process per core), and the ratio of 3 to 2.

``--corun`` runs the same measurements while one other training job (W-CNN, 1 process x 1
thread, endless) shares the machine, as on a workstation running a second experiment: a layout
that oversubscribes the cores collapses there.

Simulator throughput = trained samples / summed round time (sampling, training, gathering,
aggregation, broadcast; evaluation excluded since the fused loop does none), over all rounds and
over rounds 2..R: the fused loop is timed after a warm-up epoch, so rounds 2..R is the like-for-
like ratio; the all-rounds ratio also charges the simulator its cold first round.

``--all`` then runs, in the same invocation and one after another, the other benchmark scripts
so that every figure comes from one run on one machine: ``bench_flain.py`` (FLAIN exact vs
reference search), ``bench_vmap.py`` (client loop vs ``torch.func.vmap``) and
``bench_flower.py --ours 1x<cores> 1x1 2x1`` (vs Flower; skipped with a note when its venv is
missing). Each prints its own measured ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.data import MNIST  # noqa: E402
from fedsim.models import MnistCNN  # noqa: E402

CONFIG = ROOT / "configs" / "bench" / "w_cnn.yaml"
SAMPLES_PER_ROUND = 10 * 600


def fused(data_dir: str, rounds: int, threads: int | None, device: str = "cpu",
          samples: int = SAMPLES_PER_ROUND) -> float:
    """Samples/s of one MnistCNN trained on rounds x ``samples`` digits, batch 64, plain loop on
    ``device`` (``threads``: torch threads, None = leave as set), timed after a warm-up epoch."""
    if threads is not None:
        torch.set_num_threads(threads)
    train = MNIST(data_dir=data_dir, limit_train=samples).load().train
    x, y = ((train.x - 0.1307) / 0.3081).to(device), train.y.to(device)
    model = MnistCNN().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def sync() -> None:  # CUDA kernels run asynchronously: wait before reading the clock
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    def epoch() -> None:
        for s in range(0, len(y), 64):
            loss = F.cross_entropy(model(x[s : s + 64]), y[s : s + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up: first-call allocations and kernel selection are not throughput
    sync()
    start = time.perf_counter()
    for _ in range(rounds):
        epoch()
    sync()
    return rounds * len(y) / (time.perf_counter() - start)


def simulator(data_dir: str, rounds: int, processes: int, threads: int) -> tuple[float, float]:
    """Samples/s of the simulator on W-CNN, read from its metrics.csv: over all rounds, and over
    rounds 2..R (the fused loop is timed after a warm-up epoch; round 1 is the simulator's)."""
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-bench-"))
    args = ["launch/train.py", "--config", str(CONFIG), "--run_dir", str(run_dir), "--threads", str(threads),
            "--data.init_args.data_dir", data_dir, "--fed.rounds", str(rounds), "--fed.eval_every", str(rounds)]
    env = {**os.environ, "WANDB_MODE": "offline"}
    if processes == 1:
        cmd = [sys.executable, *args, "--devices", "1"]
    else:
        cmd = [sys.executable, "-c", "from lightning.fabric.cli import _main; _main()", "run",
               "--accelerator", "cpu", "--devices", str(processes), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    with open(run_dir / "metrics.csv", newline="") as f:
        seconds = [float(r["round_seconds"]) for r in csv.DictReader(f)]
    warm = (rounds - 1) * SAMPLES_PER_ROUND / sum(seconds[1:]) if rounds > 1 else float("nan")
    return rounds * SAMPLES_PER_ROUND / sum(seconds), warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip_two", action="store_true", help="skip the 2-process run")
    parser.add_argument("--corun", action="store_true",
                        help="measure while one other single-threaded W-CNN training job runs")
    parser.add_argument("--all", action="store_true",
                        help="then run bench_flain.py, bench_vmap.py and bench_flower.py in this invocation")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    background = start_corun(args.data_dir) if args.corun else None
    try:
        measure(args, cores)
    finally:
        if background is not None:
            background.kill()
            background.wait()
    if args.all:
        run_others(args.data_dir, cores)


def start_corun(data_dir: str) -> subprocess.Popen:
    """One other training job for the whole measurement: W-CNN, 1 process x 1 thread, endless."""
    run_dir = tempfile.mkdtemp(prefix="fedsim-corun-")
    cmd = [sys.executable, "launch/train.py", "--config", str(CONFIG), "--run_dir", run_dir, "--threads", "1",
           "--devices", "1", "--data.init_args.data_dir", data_dir, "--fed.rounds", "100000",
           "--fed.eval_every", "100000", "--fed.checkpoint_every", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(15)  # past its start-up, into training
    print("co-running: one W-CNN training job, 1 process x 1 thread")
    return proc


def measure(args, cores: int) -> None:
    limit = fused(args.data_dir, args.rounds, cores)
    print(f"fused single-model loop ({cores} threads): {limit:8.0f} samples/s")
    if cores > 1:
        one_thread = fused(args.data_dir, args.rounds, 1)
        print(f"fused single-model loop (1 thread):  {one_thread:8.0f} samples/s")
    one, one_warm = simulator(args.data_dir, args.rounds, 1, cores)
    print(f"simulator, 1 process x {cores} threads (old default):    all rounds {one:6.0f} samples/s, ratio {one / limit:.3f}; "
          f"rounds 2..R {one_warm:6.0f} samples/s, ratio {one_warm / limit:.3f}")
    if not args.skip_two:
        t = max(1, cores // 2)
        two, two_warm = simulator(args.data_dir, args.rounds, 2, t)
        print(f"simulator, 2 processes x {t} thread(s) (default):  all rounds {two:6.0f} samples/s, ratio {two / limit:.3f}; "
              f"rounds 2..R {two_warm:6.0f} samples/s, ratio {two_warm / limit:.3f}")
        print(f"2 processes vs 1 process: {two / one:.3f}x (all rounds), {two_warm / one_warm:.3f}x (rounds 2..R)")


def run_others(data_dir: str, cores: int) -> None:
    """The other benchmark scripts, one after another, their output passed through."""
    scripts = [["bench_flain.py"], ["bench_vmap.py", "--data_dir", data_dir]]
    if (ROOT / ".bench-venv" / "bin" / "python").exists():
        scripts.append(["bench_flower.py", "--data_dir", data_dir, "--ours", f"1x{cores}", "1x1", "2x1"])
    else:
        print("\nbench_flower.py skipped: no .bench-venv (python launch/bench_flower.py --setup)")
    for script in scripts:
        print(f"\n$ python launch/{' '.join(script)}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "launch" / script[0]), *script[1:]], cwd=ROOT, check=True,
                       env={**os.environ, "WANDB_MODE": "offline"})


if __name__ == "__main__":
    main()
