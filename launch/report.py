"""Turns a finished grid (launch/experiments.py) into a Markdown table, a CSV and PNG plots.

    python launch/report.py runs/grids/<name> [--out docs/results/<name>] [--columns defense]

Written for the evaluation of FLAIN (Ding, Yang, Huang, arXiv 2408.08655, ICMR 2025). Rows are
the combinations of every axis except the column axis (default "defense"), in grid order;
columns are the column axis's values. A cell reads "ACC / ASR" in percent, mean ± sample std
(n - 1) over the seeds that finished. Where a run's summary.json holds a post-training block
(FLAIN or another ``fedsim.posttrain.PostTrainingDefense``: a dict with ``acc_before`` and
``acc_after``) the cell reads "before -> after" for that block: the one named like the column,
else the first by name. ``results.csv`` has one row per (row, column) with every number.

Plots (matplotlib Agg): ``curves/<row>.png`` per-round ACC and ASR per column value (mean over
seeds, from metrics.csv); ``asr_vs_mcr.png`` final ASR (after the post-training defense where
there is one) against the "mcr" axis; ``flain_threshold.png`` FLAIN's aux accuracy against the
threshold k (``summary["flain"]["curve"]``), skipped when no run has one.

With ``--wandb`` the report also becomes one W&B run (job type "report", named
``<grid>-report``, in the grid's W&B group, offline unless ``--wandb_mode online``): the results
table and a per-run table (axis values, seed, ACC, ASR, post-training before/after) as
``wandb.Table``s, and every plot as an image. Together with the cells' own runs (grid started
with ``launch/experiments.py --wandb``), that group is the grid's dashboard.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Optional

METRICS = ("acc", "asr")


def load_grids(grid_dirs: list[str]) -> tuple[dict[str, list[str]], list[dict[str, Any]], dict[str, list[str]]]:
    """(axes, runs, commits) of one or more grids: axes merged (values in first-seen order),
    runs concatenated, commits per grid name (from each ``cells.json``)."""
    axes: dict[str, list[str]] = {}
    runs: list[dict[str, Any]] = []
    commits: dict[str, list[str]] = {}
    for grid_dir in grid_dirs:
        a, r = load_runs(Path(grid_dir))
        for axis, values in a.items():
            axes.setdefault(axis, [])
            axes[axis] += [v for v in values if v not in axes[axis]]
        runs += r
        doc = json.loads((Path(grid_dir) / "cells.json").read_text())
        commits[doc.get("name") or Path(grid_dir).name] = doc.get("commits", [])
    return axes, runs, commits


def load_runs(grid_dir: Path) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """(axes, runs) from ``cells.json``; each run: values, seed, run_dir, summary (None if absent)."""
    path = Path(grid_dir) / "cells.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run launch/experiments.py on the grid first")
    doc = json.loads(path.read_text())
    runs = []
    for cell in doc["cells"]:
        run_dir = _locate(Path(cell["run_dir"]), Path(grid_dir))
        summary = run_dir / "summary.json"
        runs.append({"values": cell["values"], "seed": cell["seed"], "run_dir": run_dir,
                     "summary": json.loads(summary.read_text()) if summary.is_file() else None})
    return doc["axes"], runs


def _locate(run_dir: Path, grid_dir: Path) -> Path:
    """cells.json stores run directories as given to the grid; fall back to grid_dir-relative."""
    if run_dir.is_dir():
        return run_dir
    return grid_dir / run_dir.parent.name / run_dir.name


def post_blocks(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The post-training defense blocks of a summary (dicts with acc_before and acc_after)."""
    return {k: v for k, v in sorted(summary.items()) if isinstance(v, dict) and "acc_before" in v and "acc_after" in v}


def run_numbers(summary: dict[str, Any], column: str) -> dict[str, float]:
    """acc / asr of the trained model, and <m>_before / <m>_after of its post-training block."""
    # the trained model theta_T: "trained" (summaries since 2026-12), "final" in older ones
    final = summary["trained"] if "trained" in summary else summary.get("final", {})
    out = {m: float(final[m]) for m in METRICS if m in final}
    blocks = post_blocks(summary)
    if blocks:
        name = column if column in blocks else next(iter(blocks))
        out["post"] = name  # type: ignore[assignment]
        for key in ("k", "flipped_neurons"):  # FLAIN's threshold and how many neurons it flipped
            if isinstance(blocks[name].get(key), (int, float)):
                out[key] = float(blocks[name][key])
        for m in METRICS:
            for when in ("before", "after"):
                if f"{m}_{when}" in blocks[name]:
                    out[f"{m}_{when}"] = float(blocks[name][f"{m}_{when}"])
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" if len(values) < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_cell(numbers: list[dict[str, Any]]) -> str:
    """ "ACC / ASR", or "ACC / ASR -> ACC / ASR" when the runs carry a post-training block."""
    if not numbers:
        return "–"
    def pair(suffix: str) -> str:
        return " / ".join(_pct([n[f"{m}{suffix}"] for n in numbers if f"{m}{suffix}" in n]) for m in METRICS)
    if all("acc_after" in n for n in numbers):
        return f"{pair('_before')} -> {pair('_after')}"
    return pair("")


def expand_post(runs: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """A run whose summary holds several post-training blocks (e.g. FLAIN reference and exact as
    callbacks of one FedAvg run) becomes one pseudo-run per block, in column ``<value>+<block>``,
    plus the run itself in column ``<value>`` showing the trained model; runs with at most one
    block are unchanged."""
    out = []
    for run in runs:
        blocks = post_blocks(run["summary"]) if run["summary"] is not None else {}
        if len(blocks) < 2:
            out.append(run)
            continue
        col = run["values"].get(column, "result")
        trained = {k: v for k, v in run["summary"].items() if k not in blocks}
        out.append({**run, "summary": trained})
        for name, block in blocks.items():
            values = {**run["values"], column: f"{col}+{name}"}
            out.append({**run, "values": values, "summary": {**trained, name: block}, "block": name})
    return out


def aggregate(axes: dict[str, list[str]], runs: list[dict[str, Any]], column: str):
    """(row axes, row keys, column values, {(row, col): [numbers of each finished seed]})."""
    row_axes = [a for a in axes if a != column]
    cols = list(axes.get(column, ["result"]))
    rows: list[tuple[str, ...]] = []
    groups: dict[tuple[tuple[str, ...], str], list[dict[str, Any]]] = {}
    for run in runs:
        row = tuple(run["values"][a] for a in row_axes)
        col = run["values"].get(column, "result")
        if col not in cols:  # a post-training block's pseudo-column, after its value's column
            base = col.split("+")[0]
            at = max(i for i, c in enumerate(cols) if c == base or c.startswith(base + "+")) + 1 \
                if base in cols else len(cols)
            cols.insert(at, col)
        if row not in rows:
            rows.append(row)
        bucket = groups.setdefault((row, col), [])
        if run["summary"] is not None:
            bucket.append(run_numbers(run["summary"], run.get("block", col)))
    return row_axes, rows, cols, groups


def claim_check(row_axes, rows, cols, groups, asr_max: float = 0.05, acc_drop_max: float = 0.005) -> list[str]:
    """The FLAIN paper's claim, checked per row for every post-training column: mean ASR after
    < ``asr_max`` and mean clean-accuracy loss (before - after) < ``acc_drop_max``. Returns
    Markdown lines (empty when no column carries a post-training block)."""
    lines = []
    for col in cols:
        cells = [(row, groups.get((row, col), [])) for row in rows]
        cells = [(row, nums) for row, nums in cells if nums and all("acc_after" in n for n in nums)
                 and any("asr_after" in n for n in nums)]  # no post-training block, or no attack: no claim
        if not cells:
            continue
        met, missed = [], []
        for row, nums in cells:
            asr = mean_std([n["asr_after"] for n in nums if "asr_after" in n])[0]
            drop = mean_std([n["acc_before"] - n["acc_after"] for n in nums])[0]
            name = " / ".join(row) or "all"
            text = f"{name} (ASR {100 * asr:.1f}%, ACC {-100 * drop:+.1f} pt)"
            (met if asr < asr_max and drop < acc_drop_max else missed).append(text)
        lines += [f"**{col}**: ASR after < {100 * asr_max:g}% with < {100 * acc_drop_max:g} pt clean-accuracy "
                  f"loss in {len(met)} of {len(cells)} rows ({' x '.join(row_axes) or 'all'}).",
                  "", f"- not met: {'; '.join(missed) if missed else 'none'}", ""]
    return lines


def flain_table(row_axes, rows, cols, groups) -> str:
    """Per row and FLAIN-like column (one with a threshold ``k``): ASR after, clean-accuracy
    change, k and flipped neurons, mean ± std over seeds. Empty when no column has a k."""
    flain_cols = [c for c in cols if any("k" in n for r in rows for n in groups.get((r, c), []))]
    if not flain_cols:
        return ""
    def ms(values, scale=1.0, fmt="{:.1f}"):
        mean, std = mean_std(values)
        if math.isnan(mean):
            return "–"
        return fmt.format(scale * mean) + ("" if len(values) < 2 else " ± " + fmt.format(scale * std))
    head = [*row_axes, "column", "seeds", "ASR after (%)", "ACC change (pt)", "k", "flipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for c in flain_cols:
            nums = [n for n in groups.get((row, c), []) if "k" in n]
            if not nums:
                continue
            lines.append("| " + " | ".join([*row, c, str(len(nums)),
                                             ms([n["asr_after"] for n in nums if "asr_after" in n], 100),
                                             ms([n["acc_after"] - n["acc_before"] for n in nums], 100, "{:+.2f}"),
                                             ms([n["k"] for n in nums], 1, "{:.4f}"),
                                             ms([n["flipped_neurons"] for n in nums if "flipped_neurons" in n], 1, "{:.0f}")])
                         + " |")
    return "\n".join(lines)


def summary_by_column(rows, cols, groups) -> str:
    """Over all rows: per post-training column, mean ASR after, mean ACC change, mean of the
    per-row std of ASR after (the seed-to-seed spread) and of k."""
    lines = ["| column | rows | mean ASR after (%) | mean ACC change (pt) | mean per-row std of ASR after (pt) "
             "| mean per-row std of k |", "|---|---|---|---|---|---|"]
    any_row = False
    for c in cols:
        per_row = [[n for n in groups.get((r, c), []) if "asr_after" in n] for r in rows]
        per_row = [nums for nums in per_row if nums]
        if not per_row:
            continue
        any_row = True
        asr = statistics.fmean(mean_std([n["asr_after"] for n in nums])[0] for nums in per_row)
        dacc = statistics.fmean(mean_std([n["acc_after"] - n["acc_before"] for n in nums])[0] for nums in per_row)
        sd_asr = statistics.fmean(mean_std([n["asr_after"] for n in nums])[1] for nums in per_row)
        ks = [mean_std([n["k"] for n in nums if "k" in n])[1] for nums in per_row if any("k" in n for n in nums)]
        sd_k = f"{statistics.fmean(ks):.4f}" if ks else "–"
        lines.append(f"| {c} | {len(per_row)} | {100 * asr:.1f} | {100 * dacc:+.2f} | {100 * sd_asr:.1f} | {sd_k} |")
    return "\n".join(lines) if any_row else ""


def markdown_table(row_axes, rows, cols, groups) -> str:
    head = [*row_axes, *cols] if row_axes else ["", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [format_cell(groups.get((row, c), [])) for c in cols]
        lines.append("| " + " | ".join([*(row or ("all",)), *cells]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, row_axes, rows, cols, groups) -> None:
    keys = [f"{m}{s}" for s in ("", "_before", "_after") for m in METRICS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*row_axes, "column", "seeds", "post_training", *(f"{k}_{s}" for k in keys for s in ("mean", "std"))])
        for row in rows:
            for col in cols:
                numbers = groups.get((row, col), [])
                post = next((n["post"] for n in numbers if "post" in n), "")
                stats = [mean_std([n[k] for n in numbers if k in n]) for k in keys]
                w.writerow([*row, col, len(numbers), post, *(f"{v:.6g}" for ms in stats for v in ms)])


# ----------------------------------------------------------------------------- plots
def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def read_curve(run_dir: Path, metric: str) -> dict[int, float]:
    """round -> metric from metrics.csv (rows without the metric, e.g. post-training rows, skipped)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(metric) not in (None, "")]
    out: dict[int, float] = {}
    for r in rows:
        out.setdefault(int(float(r["round"])) + 1, float(r[metric]))  # round r ends after r + 1 rounds
    return out


def plot_curves(out: Path, runs, row_axes, rows, cols, column: str) -> list[Path]:
    paths = []
    for row in rows:
        fig, ax = _figure(2)
        for col in cols:
            dirs = [r["run_dir"] for r in runs if r["summary"] is not None and r["values"].get(column, "result") == col
                    and tuple(r["values"][a] for a in row_axes) == row]
            for i, metric in enumerate(METRICS):
                curves = [read_curve(d, metric) for d in dirs]
                steps = sorted(set().union(*curves)) if curves else []
                ys = [100 * statistics.fmean([c[s] for c in curves if s in c]) for s in steps]
                if steps:
                    ax[0, i].plot(steps, ys, label=col)
        for i, metric in enumerate(METRICS):
            ax[0, i].set(xlabel="round", ylabel=f"{metric.upper()} (%)", title=" ".join(row) or "all")
        ax[0, 0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / "curves" / f"{_slug('_'.join(row) or 'all')}.png"))
    return paths


def plot_asr_vs_x(out: Path, row_axes, rows, cols, groups, x_axis: str = "mcr") -> Optional[Path]:
    if x_axis not in row_axes:
        return None
    xi = row_axes.index(x_axis)
    panels = list(dict.fromkeys(row[:xi] + row[xi + 1:] for row in rows))
    fig, ax = _figure(len(panels))
    for p, panel in enumerate(panels):
        prow = [r for r in rows if r[:xi] + r[xi + 1:] == panel]
        for col in cols:
            pts = [(float(r[xi]), mean_std([n.get("asr_after", n.get("asr", math.nan)) for n in groups.get((r, col), [])])[0])
                   for r in prow]
            pts = [(x, 100 * y) for x, y in pts if not math.isnan(y)]
            if pts:
                ax[0, p].plot(*zip(*pts), marker="o", label=col)
        ax[0, p].set(xlabel=x_axis.upper(), ylabel="ASR (%)", title=" ".join(panel) or "all")
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / f"asr_vs_{x_axis}.png")


def plot_flain_threshold(out: Path, runs) -> Optional[Path]:
    lines = []
    for r in runs:
        block = (r["summary"] or {}).get("flain")
        curve = block.get("curve") if isinstance(block, dict) else None
        for c in (curve if isinstance(curve, list) else [curve]):
            if isinstance(c, dict) and c.get("k"):
                lines.append(("_".join(r["values"].values()) + f"/seed{r['seed']}", c))
    if not lines:
        return None
    fig, ax = _figure(size=(7.0, 4.5))
    for label, c in lines:
        ax[0, 0].plot(c["k"], [100 * a for a in c["aux_acc"]], label=label, linewidth=1)
    ax[0, 0].set(xlabel="threshold k (mean input-neuron activation)", ylabel="aux ACC (%)", title="FLAIN threshold search")
    if len(lines) <= 12:
        ax[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out / "flain_threshold.png")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=_-]", "-", text)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- entry point
def build_report(grid_dir, out: Optional[str] = None, column: str = "defense", plots: bool = True) -> dict[str, Any]:
    """Writes README.md, results.csv and the plots into ``out`` (default <grid_dir>/report).
    ``grid_dir`` may be a list of grid directories: their runs are reported together."""
    dirs = [grid_dir] if isinstance(grid_dir, (str, Path)) else list(grid_dir)
    grid, out_dir = Path(dirs[0]), Path(out) if out else Path(dirs[0]) / "report"
    axes, raw_runs, commits = load_grids([str(d) for d in dirs])
    runs = expand_post(raw_runs, column)
    row_axes, rows, cols, groups = aggregate(axes, runs, column)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(row_axes, rows, cols, groups)
    write_csv(out_dir / "results.csv", row_axes, rows, cols, groups)
    figures = []
    if plots:
        figures = plot_curves(out_dir, runs, row_axes, rows, cols, column)
        figures += [p for p in (plot_asr_vs_x(out_dir, row_axes, rows, cols, groups),
                                plot_flain_threshold(out_dir, runs)) if p is not None]
    done = sum(r["summary"] is not None for r in raw_runs)
    names = " + ".join(commits) or grid.name
    text = [f"# Grid {names}", "",
            f"{done} of {len(raw_runs)} runs finished. Cells: ACC / ASR in %, mean ± std over seeds; "
            "post-training defenses show before -> after (`x+name`: post-training callback `name` of the "
            "same `x` run).", ""]
    text += [f"Code: {name} ran at commit(s) {', '.join(c) or 'unrecorded'}." for name, c in commits.items()]
    text += ["", table, ""]
    claim = claim_check(row_axes, rows, cols, groups)
    if claim:
        text += ["## Post-training defenses against the FLAIN paper's claim (ASR < 5%, clean-accuracy loss "
                 "< 0.5 pt)", "", *claim]
    ftable = flain_table(row_axes, rows, cols, groups)
    if ftable:
        text += ["## FLAIN per row: ASR after, clean-accuracy change, threshold k, flipped neurons "
                 "(mean ± std over seeds)", "", ftable, "", "Over all rows:", "",
                 summary_by_column(rows, cols, groups), ""]
    text += [f"![{p.stem}]({p.relative_to(out_dir)})" for p in figures if p.parent == out_dir]
    (out_dir / "README.md").write_text("\n".join(text) + "\n")
    return {"table": table, "rows": rows, "columns": cols, "finished": done, "runs": len(runs), "figures": figures,
            "claim": claim, "axes": axes, "records": runs, "commits": commits}


def log_wandb(grid_dir: str, out: str, result: dict[str, Any], project: str = "fedsim", mode: str = "offline",
              entity: Optional[str] = None, column: str = "defense") -> Path:
    """Logs the report as one W&B run in the grid's group; returns the run's local directory."""
    import wandb

    name = json.loads((Path(grid_dir) / "cells.json").read_text()).get("name") or Path(grid_dir).name
    out_dir = Path(out)
    with open(out_dir / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    axes, runs = result["axes"], result["records"]
    per_run_cols = [*axes, "seed", "acc", "asr", "post_training", "acc_before", "asr_before", "acc_after",
                    "asr_after"]
    per_run = []
    for r in runs:
        if r["summary"] is None:
            continue
        n = run_numbers(r["summary"], r.get("block", r["values"].get(column, "")))
        n["post_training"] = n.pop("post", None)
        per_run.append([*(r["values"][a] for a in axes), r["seed"], *(n.get(k) for k in per_run_cols[len(axes) + 1:])])
    run = wandb.init(project=project, entity=entity, group=name, name=f"{name}-report", job_type="report",
                     dir=str(out_dir), mode=mode, config={"grid": name, "axes": axes})
    run.log({"results": wandb.Table(columns=rows[0], data=rows[1:]),
             "runs": wandb.Table(columns=per_run_cols, data=per_run),
             **{f"plots/{p.relative_to(out_dir).with_suffix('').as_posix()}": wandb.Image(str(p))
                for p in result["figures"]}})
    run.summary.update({"finished": result["finished"], "runs": result["runs"]})
    local = Path(run.dir).parent
    run.finish()
    return local


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grid_dir", nargs="+", help="the grid's out_dir (holds cells.json); several are reported together")
    parser.add_argument("--out", default=None, help="output folder (default: <grid_dir>/report)")
    parser.add_argument("--columns", default="defense", help="the axis shown as columns")
    parser.add_argument("--no_plots", action="store_true", help="only the table and the CSV")
    parser.add_argument("--wandb", action="store_true", help="also log the report as a W&B run in the grid's group")
    parser.add_argument("--wandb_project", default="fedsim", help="W&B project (with --wandb)")
    parser.add_argument("--wandb_entity", default=None, help="W&B entity (with --wandb)")
    parser.add_argument("--wandb_mode", default="offline", choices=["offline", "online", "disabled"],
                        help="W&B mode (with --wandb); offline runs sync later with `wandb sync`")
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.grid_dir[0]) / "report")
    result = build_report(args.grid_dir, out, args.columns, not args.no_plots)
    print(result["table"])
    print(f"{result['finished']}/{result['runs']} runs; wrote {out}")
    if args.wandb:
        local = log_wandb(args.grid_dir[0], out, result, args.wandb_project, args.wandb_mode, args.wandb_entity,
                          args.columns)
        print(f"W&B report run ({args.wandb_mode}): {local}")
    return result


if __name__ == "__main__":
    main()
