"""Would training several clients at once with ``torch.func.vmap`` beat the simulator's loop?

    python launch/bench_vmap.py [--data_dir ../shared/data] [--threads 2] [--repeats 5]
    python launch/bench_vmap.py --device cuda --workloads W-CNN-25 W-CNN [--json figures.json]

Prints measured figures only. For each workload shape it times one round of local training two
ways, in the same process, on the same client data, from the same global model:

- loop: ``fedsim.clients.local_train`` once per client (what the simulator runs);
- vmap: the clients' parameters stacked on a leading axis, ``torch.func.grad`` of the loss under
  ``torch.func.vmap`` (``randomness="different"`` for dropout), plain SGD on the stacked tensors,
  each client's minibatches gathered from its own seeded permutation.

Workloads (issue 6's shapes): W-overhead (``LogReg``, 50 clients x 50 samples, batch 64 -> one
step each) and W-CNN (``MnistCNN``, 10 clients x 600 samples, batch 64 -> 10 steps each), plus
W-CNN-small (``MnistCNN``, 32 clients x 64 samples) for the many-tiny-clients case, and W-CNN-25
(``MnistCNN``, 25 clients x 1,100 samples, batch 256: the cohort and client size of the FLAIN
reference federation, configs/paper/mnist.yaml, with SGD for both ways). For LogReg (no dropout)
the two ways must give the same updates; the script checks it and prints the largest difference.
The stacking follows the model-ensembling pattern in PyTorch's ``torch.func`` docs.

``--device cuda`` runs both ways on the GPU (data, model and updates there; every timed round
ends with ``torch.cuda.synchronize``); ``--json`` also writes the figures to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.clients import ClientConfig, local_train  # noqa: E402
from fedsim.data import MNIST, EmbeddedMNIST  # noqa: E402
from fedsim.models import LogReg, MnistCNN  # noqa: E402
from fedsim.params import ParamLayout  # noqa: E402
from fedsim.runtime.seeding import generator  # noqa: E402

WORKLOADS = {  # name: (model class, clients, samples per client, batch, lr)
    "W-overhead": (LogReg, 50, 50, 64, 0.01),
    "W-CNN": (MnistCNN, 10, 600, 64, 0.01),
    "W-CNN-small": (MnistCNN, 32, 64, 32, 0.01),
    "W-CNN-25": (MnistCNN, 25, 1100, 256, 0.01),
}
DEFAULT_WORKLOADS = ["W-overhead", "W-CNN", "W-CNN-small"]  # the CPU figures in docs/benchmarks.md


def loop_round(model: nn.Module, layout: ParamLayout, theta: torch.Tensor, xs, ys, cfg: ClientConfig,
               normalize) -> torch.Tensor:
    rows = [local_train(model=model, layout=layout, global_params=theta, x=x, y=y, config=cfg, seed=0, round=1,
                        client_id=k, normalize=normalize).update for k, (x, y) in
            enumerate(zip(xs, ys))]
    return torch.stack(rows)


def vmap_round(model: nn.Module, layout: ParamLayout, theta: torch.Tensor, xs, ys, cfg: ClientConfig,
               normalize) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    layout.load(model, theta)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    k = len(xs)
    stacked = {n: p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()) for n, p in model.named_parameters()}
    x, y = torch.stack(xs), torch.stack(ys)  # [K, n, ...], [K, n]
    n, bs = y.shape[1], cfg.batch_size
    perms = torch.stack([torch.randperm(n, generator=generator(0, 1, c, "train")) for c in range(k)]).to(x.device)

    def loss(params, xb, yb):
        return F.cross_entropy(functional_call(model, params, (normalize(xb),)), yb)

    step = vmap(grad(loss), randomness="different")
    for _ in range(cfg.epochs):
        for start in range(0, n, bs):
            idx = perms[:, start:start + bs]
            xb = torch.gather(x, 1, idx.view(k, -1, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))
            yb = torch.gather(y, 1, idx)
            grads = step(stacked, xb, yb)
            stacked = {name: stacked[name] - cfg.lr * grads[name] for name in names}
    flat = torch.cat([stacked[name].reshape(k, -1) for name in names], 1)
    return flat - theta[: layout.num_weights]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device = torch.device("cpu")) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    _sync(device)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="*", default=DEFAULT_WORKLOADS, choices=list(WORKLOADS))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both ways train")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        splits = MNIST(data_dir=args.data_dir, limit_train=30000).load()
    except FileNotFoundError:
        splits = EmbeddedMNIST().load()
    mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)

    def normalize(t):
        return (t - mean) / std

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({where}), {torch.get_num_threads()} threads, "
          f"data {splits.name}, median of {args.repeats} rounds after one warm-up")
    print(f"{'workload':12s} {'clients':>7s} {'samples':>7s} {'loop s':>8s} {'vmap s':>8s} {'vmap/loop speed':>16s} "
          f"{'max |diff|':>10s}")
    rows: list[dict] = []
    mismatch: list[str] = []

    def write_json() -> None:  # after every workload, so a run stopped early keeps its figures
        if args.json:
            meta = {"torch": torch.__version__, "device": str(device), "device_name": where,
                    "threads": torch.get_num_threads(), "data": splits.name, "repeats": args.repeats}
            Path(args.json).write_text(json.dumps({**meta, "rows": rows, "errors": mismatch}, indent=2))

    for name in args.workloads:
        cls, k, per, bs, lr = WORKLOADS[name]
        k = min(k, len(splits.train) // per)  # the embedded fallback holds 4,000 digits
        torch.manual_seed(0)
        model = cls().to(device)
        layout = ParamLayout(model)
        theta = layout.flatten(model).clone()
        cfg = ClientConfig(optimizer="sgd", lr=lr, epochs=1, batch_size=bs)
        xs = [splits.train.x[c * per:(c + 1) * per].to(device) for c in range(k)]
        ys = [splits.train.y[c * per:(c + 1) * per].to(device) for c in range(k)]
        t_loop, u_loop = timed(lambda: loop_round(model, layout, theta, xs, ys, cfg, normalize), args.repeats,
                               device)
        t_vmap, u_vmap = timed(lambda: vmap_round(model, layout, theta, xs, ys, cfg, normalize), args.repeats,
                               device)
        w = layout.num_weights
        diff = (u_loop[:, :w] - u_vmap).abs().max().item()
        if name == "W-overhead" and diff > 1e-5:
            mismatch.append(f"vmap and loop disagree on {name}: max |diff| {diff:.2e}")
        same = "" if name == "W-overhead" else " (dropout: streams differ)"
        print(f"{name:12s} {k:7d} {per:7d} {t_loop:8.4f} {t_vmap:8.4f} {t_loop / t_vmap:15.2f}x {diff:10.2e}{same}",
              flush=True)
        rows.append({"workload": name, "clients": k, "samples": per, "batch": bs, "loop_s": t_loop,
                     "vmap_s": t_vmap, "vmap_speedup": t_loop / t_vmap, "max_abs_diff": diff})
        write_json()
    if mismatch:
        raise RuntimeError("; ".join(mismatch))


if __name__ == "__main__":
    main()
