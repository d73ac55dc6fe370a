"""A run's training curves as a PNG: ``<run_dir>/curves.png``.

``plot_run_curves(run_dir)`` reads ``metrics.csv`` (one row per round, ``round`` 0-based) and
``summary.json`` and draws clean ACC and aux ACC (left panel) and ASR (right panel, only when
the run has an ASR, i.e. an attack) per evaluated round, with x = the ``round`` column exactly as
in metrics.csv (integer ticks). Each post-training defense (a summary block with ``acc_before``
and ``acc_after``: FLAIN, fine-pruning, ...) is one marker at x = the last round: its
``acc_after`` / ``asr_after``, labelled with the block's name; the final model (the one in
``final_model.pt``, ``summary["final"]["model"]``) is drawn larger with a black edge and labelled
"final".

Rows of metrics.csv that are not training rounds (post-training defenses log one extra row at
step = rounds with keys like ``flain/acc_after``) are recognised by a missing ``train_loss`` and
skipped; files written before ``train_loss`` existed are read as they are.

Matplotlib's Agg canvas through ``Figure`` (no pyplot global state), so it is safe in any process.
The helpers (``read_rows``, ``read_curve``, ``post_blocks``, ``style``) are shared with
``launch/report.py``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
END_MARKERS = ("*", "P", "X", "D", "^", "v", "s", "h")
# a line with at most this many points also gets a marker on each point
MARK_POINTS_UP_TO = 25


def color(i: int) -> str:
    """The i-th colour of matplotlib's default cycle (tab10)."""
    return f"C{i % 10}"


def style(i: int) -> dict[str, Any]:
    """Line style of the i-th series: colour, line style and marker all vary, so series stay
    apart in greyscale and when their colours repeat."""
    return {"color": color(i), "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def read_rows(run_dir: Union[str, Path]) -> list[dict[str, str]]:
    """The training-round rows of ``<run_dir>/metrics.csv`` (empty if there is no file). Rows
    without ``train_loss`` (post-training rows) are dropped when the file has that column."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    if "train_loss" in fields:
        rows = [r for r in rows if r.get("train_loss") not in (None, "")]
    return rows


def _number(text: Optional[str]) -> Optional[float]:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def read_curve(run_dir: Union[str, Path], metric: str) -> dict[int, float]:
    """round -> metric of the training rounds in metrics.csv, x exactly as in its ``round``
    column (0-based); rounds where the metric was not evaluated are absent."""
    out: dict[int, float] = {}
    for r in read_rows(run_dir):
        value, step = _number(r.get(metric)), _number(r.get("round"))
        if value is not None and step is not None:
            out.setdefault(int(step), value)
    return out


def last_round(run_dir: Union[str, Path], summary: Optional[dict[str, Any]] = None) -> Optional[int]:
    """The last training round in metrics.csv (0-based), else ``summary["rounds"] - 1``."""
    steps = [s for s in (_number(r.get("round")) for r in read_rows(run_dir)) if s is not None]
    if steps:
        return int(max(steps))
    rounds = (summary or {}).get("rounds")
    return int(rounds) - 1 if isinstance(rounds, (int, float)) and rounds > 0 else None


def post_blocks(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The post-training defense blocks of a summary (dicts with acc_before and acc_after), by name."""
    return {k: v for k, v in sorted(summary.items()) if isinstance(v, dict) and "acc_before" in v and "acc_after" in v}


def integer_rounds(ax, steps: list[int]) -> None:
    """Integer ticks on a round axis: every round when there are few (with half a round of
    margin), else matplotlib's integer locator."""
    from matplotlib.ticker import MaxNLocator

    if steps and max(steps) - min(steps) < 10:
        lo, hi = int(min(steps)), int(max(steps))
        ax.set_xticks(range(lo, hi + 1))
        ax.set_xlim(lo - 0.5, hi + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(ncols: int, size: tuple[float, float] = (5.2, 3.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1]))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def run_curves_figure(run_dir: Union[str, Path], summary: Optional[dict[str, Any]] = None):
    """The Figure that ``plot_run_curves`` saves (for tests and notebooks)."""
    run_dir = Path(run_dir)
    if summary is None:
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
    blocks = post_blocks(summary)
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    final_model = final.get("model")  # None in summaries older than "trained"
    curves = {m: read_curve(run_dir, m) for m in ("acc", "aux_acc", "asr")}
    has_asr = bool(curves["asr"]) or any("asr_after" in b for b in blocks.values())
    end = last_round(run_dir, summary)

    panels = [("acc", "clean ACC / aux ACC (%)")] + ([("asr", "ASR (%)")] if has_asr else [])
    fig, axes = _figure(len(panels))
    steps_all = sorted(set().union(*curves.values()))
    for ax, (panel, ylabel) in zip(axes, panels):
        series = [("acc", "clean ACC", 0, "-"), ("aux_acc", "aux ACC", 1, "--")] if panel == "acc" else \
            [("asr", "ASR", 3, "-")]
        for metric, label, c, ls in series:
            points = sorted(curves[metric].items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, [100 * y for y in ys], color=color(c), linestyle=ls, label=label, linewidth=1.5,
                        marker="o" if len(points) <= MARK_POINTS_UP_TO else None, markersize=3)
        key = "acc" if panel == "acc" else "asr"
        if end is not None:
            if final_model == "trained" and curves[key]:  # theta_T is the final model: ring its last point
                step = max(curves[key])
                ax.plot([step], [100 * curves[key][step]], linestyle="none", marker="o", markersize=11,
                        markerfacecolor="none", markeredgecolor="k", markeredgewidth=1.5, label="trained (final)")
            marked = [(n, b) for n, b in blocks.items() if isinstance(b.get(f"{key}_after"), (int, float))]
            span = max(4, end - min(steps_all)) if steps_all else 4
            for i, (name, block) in enumerate(marked):  # side by side, 1.5% of the x-range apart
                dodge = 0.015 * span * (i - (len(marked) - 1) / 2)
                is_final = name == final_model
                ax.plot([end + dodge], [100 * float(block[f"{key}_after"])], linestyle="none",
                        marker=END_MARKERS[i % len(END_MARKERS)], color=color(4 + i),
                        markersize=13 if is_final else 9, markeredgecolor="k" if is_final else color(4 + i),
                        markeredgewidth=1.5 if is_final else 0.5, zorder=5,
                        label=f"{name} (after{', final' if is_final else ''})")
        if not ax.has_data():
            ax.text(0.5, 0.5, "no evaluated round", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="round (as in metrics.csv, 0-based)", ylabel=ylabel, ylim=(-2, 102))
        integer_rounds(ax, steps_all + ([end] if end is not None else []))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    title = run_dir.name if run_dir.name else str(run_dir)
    if final_model:
        title += f" (final model: {final_model})"
    if not has_asr:
        title += " - no attack, no ASR"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_run_curves(run_dir: Union[str, Path], summary: Optional[dict[str, Any]] = None,
                    path: Optional[Union[str, Path]] = None) -> Path:
    """Writes ``<run_dir>/curves.png`` (or ``path``) and returns its path. ``summary`` defaults to
    ``<run_dir>/summary.json`` (pass the dict when the file is not written yet)."""
    fig = run_curves_figure(run_dir, summary)
    out = Path(path) if path is not None else Path(run_dir) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)  # atomic: a reader never sees half a PNG
    return out
