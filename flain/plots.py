"""PNG figures for the FLAIN defense (matplotlib's Agg canvas, no pyplot global state).

FLAIN (Ding, Yang, Huang, ICMR 2025, arXiv 2408.08655) rests on one observation: the input
neurons a backdoor uses are dormant on clean inputs and active on triggered ones.
``plot_activations`` shows that per layer (histograms of the mean activations on clean and on
triggered auxiliary inputs, and one point per neuron: clean vs triggered, with the threshold);
``plot_threshold`` shows the search: threshold vs aux accuracy and vs flipped neurons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from flain.functional import ThresholdResult


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_activations(path: Path, results: Sequence[ThresholdResult], clean: Sequence[Tensor],
                     triggered: Sequence[Optional[Tensor]]) -> Path:
    """One row per layer: histogram of mean input-neuron activations (clean vs triggered) and a
    scatter of clean vs triggered activation per neuron; the dashed line is the chosen k."""
    fig = Figure(figsize=(10, 3.6 * len(results)))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (ax_h, ax_s), res, a_c, a_t in zip(axes, results, clean, triggered):
        a_c = a_c.detach().float().cpu()
        ax_h.hist(a_c.numpy(), bins=60, alpha=0.6, label="clean aux")
        if a_t is not None:
            ax_h.hist(a_t.detach().float().cpu().numpy(), bins=60, alpha=0.6, label="triggered aux")
        ax_h.set_yscale("log")
        ax_h.set_xlabel(f"{res.layer}: mean input-neuron activation")
        ax_h.set_ylabel("neurons")
        ax_h.legend()
        if a_t is not None:
            ax_s.scatter(a_c.numpy(), a_t.detach().float().cpu().numpy(), s=4, alpha=0.5)
            ax_s.set_ylabel("activation on triggered inputs")
        ax_s.set_xlabel("activation on clean inputs")
        ax_s.set_title(f"{res.flipped}/{res.total} flipped" +
                       ("" if a_t is not None else " (no triggered inputs)"))
        for ax in (ax_h, ax_s):
            if res.k is not None:
                ax.axvline(res.k, color="k", linestyle="--", linewidth=1)
    return _save(fig, path)


def plot_threshold(path: Path, results: Sequence[ThresholdResult]) -> Path:
    """Threshold vs aux accuracy (left axis) and vs flipped neurons (right axis), per layer."""
    fig = Figure(figsize=(7, 3.6 * len(results)))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, res in zip(axes, results):
        ks = [c[0] for c in res.curve]
        ax.plot(ks, [c[1] for c in res.curve], ".-", color="tab:blue", label="aux accuracy")
        ax.axhline(res.aux_acc_before, color="tab:blue", linestyle=":", linewidth=1)
        ax.set_xlabel(f"{res.layer}: threshold k ({res.mode})")
        ax.set_ylabel("aux accuracy", color="tab:blue")
        twin = ax.twinx()
        twin.plot(ks, [c[2] for c in res.curve], ".-", color="tab:orange", markersize=2)
        twin.set_ylabel("flipped input neurons", color="tab:orange")
        if res.k is not None:
            ax.axvline(res.k, color="k", linestyle="--", linewidth=1)
    return _save(fig, path)
