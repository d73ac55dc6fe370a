"""FLAIN threshold search: cached-tail sweeps vs the naive loop of the authors' scripts.

    python launch/bench_flain.py [--threads 1] [--epochs 2] [--aux 500] [--tolerance 0.001]

FLAIN: Ding, Yang, Huang, ICMR 2025 (arXiv 2408.08655). Workload: the reference MNIST CNN
(``fedsim.models.MnistCNN``) trained briefly from a seeded theta_0 on the 5,000 embedded MNIST
digits (10% of the training batches carry a 4x4 white corner patch relabelled to 0, so the
before/after ASR printed at the end means something); auxiliary set = the first ``--aux`` test
digits (class-balanced), ASR on the rest. Timed, on the same model and aux set:

1. naive reference: the scripts' loop with the CIFAR-10 grid (k = 0.001, +0.0001, ..., cap 1,
   stop at the first k whose aux drop >= tolerance), one full forward pass over the aux set per
   threshold (flips vectorised, so this baseline is faster than the scripts' per-column loop);
2. ``flain_repair(mode="reference")``: the same search through the cached tail (same k checked);
3. ``flain_repair(mode="exact")``: every crossing threshold, through the cached tail.

Prints measured figures only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.data import EmbeddedMNIST  # noqa: E402
from fedsim.models import MnistCNN  # noqa: E402
from fedsim.params import ParamLayout  # noqa: E402
from flain import flain_repair, flip_columns  # noqa: E402

MEAN, STD, TARGET = 0.1307, 0.3081, 0


def trigger(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, -5:-1, -5:-1] = 1.0
    return x


def train(model, x, y, epochs: int, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            xb, yb = x[idx], y[idx]
            if torch.rand(1, generator=gen).item() < 0.1:  # a poisoned batch
                xb, yb = trigger(xb), torch.full_like(yb, TARGET)
            opt.zero_grad()
            F.cross_entropy(model((xb - MEAN) / STD), yb).backward()
            opt.step()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).sum().item() / len(y)


def naive_reference(model, layout, theta0, theta_t, x, y, k_init, k_step, k_cap, tol):
    """One full forward per grid threshold; returns (k, evaluations)."""
    layout.load(model, theta_t)
    seen = []
    hook = model.fc1.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    acc0 = accuracy(model, x, y)
    hook.remove()
    act = seen[0].mean(0)
    w0 = layout.view(theta0, "fc1.weight")
    delta = layout.view(theta_t, "fc1.weight") - w0
    k, evals = k_init, 0
    while k <= k_cap:
        model.fc1.weight.data.copy_(flip_columns(w0, delta, act, k))
        evals += 1
        if tol <= acc0 - accuracy(model, x, y):
            return k, evals
        k += k_step
    return None, evals


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--aux", type=int, default=500)
    p.add_argument("--tolerance", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grid = dict(k_init=0.001, k_step=0.0001, k_cap=1.0)

    data = EmbeddedMNIST().load()
    torch.manual_seed(args.seed)  # MnistCNN's default init draws from the global generator
    model = MnistCNN()
    layout = ParamLayout(model)
    theta0 = layout.flatten(model)
    (_, t_train) = timed(lambda: train(model, data.train.x, data.train.y, args.epochs,
                                       torch.Generator().manual_seed(args.seed)))
    theta_t = layout.flatten(model)
    aux_x, aux_y = (data.test.x[: args.aux] - MEAN) / STD, data.test.y[: args.aux]
    rest = data.test.y[args.aux:] != TARGET
    asr_x = (trigger(data.test.x[args.aux:][rest]) - MEAN) / STD
    asr_y = torch.full((len(asr_x),), TARGET)
    print(f"threads={args.threads} trained {args.epochs} epochs in {t_train:.1f}s; aux={len(aux_y)}"
          f" tolerance={args.tolerance} grid={grid}")

    (k_naive, n_naive), t_naive = timed(lambda: naive_reference(
        model, layout, theta0, theta_t, aux_x, aux_y, tol=args.tolerance, **grid))
    print(f"naive reference : k={k_naive} after {n_naive} full forward passes, {t_naive:.3f}s")
    runs = {}
    for mode in ("reference", "exact"):
        (vec, (res,)), t = timed(lambda: flain_repair(
            model, layout, theta0, theta_t, aux_x, aux_y, ["fc1"], mode,
            tolerance=args.tolerance, **grid))
        runs[mode] = (vec, res, t)
        layout.load(model, vec)
        print(f"{mode:9s} (cached): k={res.k} flipped={res.flipped}/{res.total} "
              f"aux {res.aux_acc_before:.4f}->{res.aux_acc_after:.4f} "
              f"evaluations={len(res.curve)} fast_path={res.fast_path} {t:.3f}s "
              f"ASR {accuracy(model, asr_x, asr_y):.3f}")
    layout.load(model, theta_t)
    print(f"ASR before FLAIN: {accuracy(model, asr_x, asr_y):.3f}; "
          f"reference k equal to naive k: {runs['reference'][1].k == k_naive}")
    print(f"speed-up naive reference / cached reference: {t_naive / runs['reference'][2]:.1f}x")
    print(f"speed-up naive reference / exact:            {t_naive / runs['exact'][2]:.1f}x")


if __name__ == "__main__":
    main()
