"""PNG figures for the FLAIN defense (matplotlib's Agg canvas, no pyplot global state).

FLAIN (Ding, Yang, Huang, ICMR 2025, arXiv 2408.08655) rests on one observation: the input
neurons a backdoor uses are dormant on clean inputs and active on triggered ones.
``plot_activations`` shows that per layer: histograms of the mean activations on clean and on
triggered auxiliary inputs with the threshold k and the flipped range [0, k] marked, and one
point per neuron, clean vs triggered activation, the flipped neurons in red (without triggered
inputs: the clean activation per neuron, sorted). ``plot_threshold`` shows the search: threshold
vs aux accuracy (with theta_T's) and vs the number of flipped neurons, the chosen k marked.

Every line and point set has a legend entry. ``activations_figure`` / ``threshold_figure``
return the ``Figure`` that the ``plot_*`` functions save (tests, notebooks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from flain.functional import ThresholdResult, flip_mask

CLEAN, TRIGGERED, FLIPPED, KEPT = "tab:blue", "tab:orange", "tab:red", "tab:gray"
UNIT = "mean activation over the set"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _k_text(k: Optional[float]) -> str:
    return "none (no neuron flipped)" if k is None else f"{k:.4g}"


def activations_figure(results: Sequence[ThresholdResult], clean: Sequence[Optional[Tensor]],
                       triggered: Sequence[Optional[Tensor]]) -> Figure:
    """The figure of ``plot_activations``: one row per layer, histogram and per-neuron scatter."""
    import numpy as np

    fig = Figure(figsize=(11, 3.9 * len(results)))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (ax_h, ax_s), res, a_c, a_t in zip(axes, results, clean, triggered):
        if a_c is None:
            for ax in (ax_h, ax_s):
                ax.text(0.5, 0.5, "no activations recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        a_c = a_c.detach().float().cpu()
        a_t = None if a_t is None else a_t.detach().float().cpu()
        mask = flip_mask(a_c, res.k)
        n_flip, layer = int(mask.sum()), res.layer or "layer"
        # histograms on common bins, so clean and triggered compare bin by bin
        both = a_c.numpy() if a_t is None else np.concatenate([a_c.numpy(), a_t.numpy()])
        bins = np.histogram_bin_edges(both, bins=60)
        ax_h.hist(a_c.numpy(), bins=bins, alpha=0.6, color=CLEAN, label="clean aux inputs")
        if a_t is not None:
            ax_h.hist(a_t.numpy(), bins=bins, alpha=0.6, color=TRIGGERED, label="triggered aux inputs")
        if res.k is not None:
            ax_h.axvspan(0.0, res.k, color=FLIPPED, alpha=0.12, label=f"flipped range 0 <= a <= k ({n_flip} neurons)")
            ax_h.axvline(res.k, color="k", linestyle="--", linewidth=1, label=f"threshold k = {_k_text(res.k)}")
        ax_h.set_yscale("log")
        ax_h.set_xlabel(f"{layer}: input-neuron activation ({UNIT})")  # post-activation value, no unit
        ax_h.set_ylabel("input neurons (count, log scale)")
        ax_h.set_title(f"{layer}: activations, clean vs triggered")
        ax_h.legend(fontsize=7)

        c = a_c.numpy()
        if a_t is not None:
            t = a_t.numpy()
            m = mask.numpy()
            ax_s.scatter(c[~m], t[~m], s=5, alpha=0.5, color=KEPT, label=f"kept ({int((~m).sum())} neurons)")
            ax_s.scatter(c[m], t[m], s=7, alpha=0.8, color=FLIPPED, label=f"flipped ({n_flip} neurons)")
            lo, hi = float(min(c.min(), t.min())), float(max(c.max(), t.max()))
            ax_s.plot([lo, hi], [lo, hi], color="k", linestyle=":", linewidth=0.8, label="clean = triggered")
            if res.k is not None:
                ax_s.axvline(res.k, color="k", linestyle="--", linewidth=1, label=f"threshold k = {_k_text(res.k)}")
            ax_s.set_xlabel(f"clean aux inputs: {UNIT}")
            ax_s.set_ylabel(f"triggered aux inputs: {UNIT}")
        else:  # no trigger: each neuron's clean activation, in the search's (ascending) order
            order = np.argsort(c, kind="stable")
            ranks = np.arange(len(c))
            m = mask.numpy()[order]
            ax_s.scatter(ranks[~m], c[order][~m], s=5, color=KEPT, label=f"kept ({int((~m).sum())} neurons)")
            ax_s.scatter(ranks[m], c[order][m], s=7, color=FLIPPED, label=f"flipped ({n_flip} neurons)")
            if res.k is not None:
                ax_s.axhline(res.k, color="k", linestyle="--", linewidth=1, label=f"threshold k = {_k_text(res.k)}")
            ax_s.set_xlabel("input neuron (rank by clean activation)")
            ax_s.set_ylabel(f"clean aux inputs: {UNIT}")
        ax_s.set_title(f"{layer}: {res.flipped}/{res.total} input neurons flipped" +
                       ("" if a_t is not None else " (no triggered inputs)"))
        ax_s.legend(fontsize=7)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return fig


def plot_activations(path: Path, results: Sequence[ThresholdResult], clean: Sequence[Tensor],
                     triggered: Sequence[Optional[Tensor]]) -> Path:
    """One row per layer: histogram of mean input-neuron activations (clean vs triggered, the
    threshold k dashed, the flipped range shaded) and a scatter of clean vs triggered activation
    per neuron (flipped neurons in red); writes ``path`` and returns it."""
    return _save(activations_figure(results, clean, triggered), path)


def threshold_figure(results: Sequence[ThresholdResult]) -> Figure:
    """The figure of ``plot_threshold``: one panel per layer."""
    fig = Figure(figsize=(7.5, 3.9 * len(results)))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, res in zip(axes, results):
        ks = [c[0] for c in res.curve]
        layer = res.layer or "layer"
        ax.plot(ks, [100 * c[1] for c in res.curve], ".-", color=CLEAN, label="aux accuracy at k")
        ax.axhline(100 * res.aux_acc_before, color=CLEAN, linestyle=":", linewidth=1,
                   label=f"aux accuracy of theta_T ({100 * res.aux_acc_before:.1f}%)")
        ax.set_xlabel(f"{layer}: threshold k ({UNIT}; {res.mode} search)")
        ax.set_ylabel("aux accuracy (%)", color=CLEAN)
        twin = ax.twinx()
        twin.plot(ks, [c[2] for c in res.curve], ".-", color=TRIGGERED, markersize=2, label="flipped input neurons")
        twin.set_ylabel("flipped input neurons (count)", color=TRIGGERED)
        if res.k is not None:
            ax.axvline(res.k, color="k", linestyle="--", linewidth=1,
                       label=f"chosen k = {_k_text(res.k)} ({res.flipped}/{res.total} flipped)")
        if not ks:
            ax.text(0.5, 0.5, "no threshold evaluated", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{layer}: threshold search")
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        twin.legend(handles + h2, labels + l2, fontsize=7, loc="best")  # on the twin: drawn on top
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return fig


def plot_threshold(path: Path, results: Sequence[ThresholdResult]) -> Path:
    """Threshold vs aux accuracy (left axis, theta_T's dotted) and vs flipped neurons (right
    axis), per layer, the chosen k dashed; writes ``path`` and returns it."""
    return _save(threshold_figure(results), path)
