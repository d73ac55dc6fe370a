"""Turns a finished grid (launch/experiments.py), or one run, into a Markdown table, a CSV and PNG plots.

    python launch/report.py runs/grids/<name> [--out docs/results/<name>] [--columns defense]
    python launch/report.py runs/grids/<a> runs/grids/<b> --where mcr=0.2,0.4 --where 'attack!=dba'
    python launch/report.py runs/<run>          # one run directory (summary.json, no cells.json)

Several grids are reported together (a cell with the same axis values and seed in two of them is
one run with the post-training blocks of both); ``--where`` keeps the runs with those axis values.

Written for the evaluation of FLAIN (Ding, Yang, Huang, arXiv 2408.08655, ICMR 2025). Rows are
the combinations of every axis except the column axis (default "defense"), in grid order;
columns are the column axis's values; where the column axis holds training-time defenses besides
``fedavg`` (aggregators such as Krum or DeepSight), a last column names each row's best of them
(those that meet the paper's bounds first, then the lowest mean ASR, then the highest ACC:
``best_robust``), and each of them is checked against the
paper's bounds with FedAvg's trained accuracy of the row as the reference (``robust_check``). A cell reads "ACC / ASR" in percent, mean ± sample std
(n - 1) over the seeds that finished. Where a run's summary.json holds a post-training block
(FLAIN or another ``fedsim.posttrain.PostTrainingDefense``: a dict with ``acc_before`` and
``acc_after``) the cell reads "before -> after" for that block: the one named like the column,
else the first by name. A run with several blocks becomes one pseudo-column ``<value>+<block>``
per block (``expand_post``). ``results.csv`` has one row per (row, column) with every number and
the seeds it averages (``seed_ids``); ``--compare`` sets it beside an earlier report's.

Plots (matplotlib Agg, no pyplot state): ``curves/<row>.png`` per-round ACC and ASR per column
value (mean over seeds, from metrics.csv; x = metrics.csv's 0-based ``round``, integer ticks);
a column's post-training results are markers at its last round, and a pseudo-column ``x+block``
(same training run as ``x``) is only such a marker; ``asr_vs_mcr.png`` final ASR (after the
post-training defense where there is one) against the "mcr" axis, mean ± std over seeds, one
panel per other row value, all panels on one 0-100 % scale; ``flain_threshold.png`` one panel per
table row: aux accuracy against the threshold k of every block with a ``curve`` (FLAIN; each
block and each layer its own line, the chosen k marked), skipped when no run has one.

A single run directory gets the same treatment for one run: a table with the trained model and
each post-training defense (ACC, ASR, aux ACC, change, k, flipped neurons), the claim check,
``curves.png`` (``fedsim.curves.plot_run_curves``) and the threshold plot.

With ``--wandb`` the report also becomes one W&B run (job type "report", named
``<grid>-report``, in the grid's W&B group, offline unless ``--wandb_mode online``): the results
table and a per-run table (axis values, seed, ACC, ASR, post-training before/after) as
``wandb.Table``s with numeric columns (axis values stay strings), and every plot as an image.
Together with the cells' own runs (grid started with ``launch/experiments.py --wandb``), that
group is the grid's dashboard.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fedsim from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments.py beside this file

from experiments import WhereError, parse_where, passes  # noqa: E402  (this folder: the grid runner)
from fedsim import curves as run_curves  # noqa: E402
from fedsim.curves import END_MARKERS, LINESTYLES, MARKERS, color, integer_rounds, post_blocks  # noqa: E402

METRICS = ("acc", "asr")


def load_grids(grid_dirs: list[str]) -> tuple[dict[str, list[str]], list[dict[str, Any]], dict[str, list[str]]]:
    """(axes, runs, commits) of one or more grids: axes merged (values in first-seen order),
    runs concatenated, commits per grid name (from each ``cells.json``). A cell that is in
    several grids (same axis values and seed: a ``resume_from`` grid's cell and its source) is
    one run whose summary holds the post-training blocks of all of them (the first grid's trained
    model and, for a block name in several grids, the first grid's block)."""
    axes: dict[str, list[str]] = {}
    runs: list[dict[str, Any]] = []
    commits: dict[str, list[str]] = {}
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for grid_dir in grid_dirs:
        a, r = load_runs(Path(grid_dir))
        for axis, values in a.items():
            axes.setdefault(axis, [])
            axes[axis] += [v for v in values if v not in axes[axis]]
        for run in r:
            key = (json.dumps(run["values"], sort_keys=True), run["seed"])
            first = seen.get(key)
            if first is None:
                seen[key] = run
                runs.append(run)
            elif run["summary"] is not None:  # the same cell in another grid (resume_from): one run, all blocks
                if first["summary"] is None:
                    first["summary"] = run["summary"]
                else:
                    extra = {k: v for k, v in post_blocks(run["summary"]).items() if k not in first["summary"]}
                    first["summary"] = {**first["summary"], **extra}
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


def mean_std_text(values: list[float], scale: float = 1.0, spec: str = ".1f") -> str:
    """``scale`` x "mean ± std" over ``values`` (the mean alone for one value, "–" for none), the mean
    formatted with ``spec``, the std with ``spec`` without its sign (a std is never negative:
    "-0.04 ± 0.05", not "± +0.05")."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    text = format(scale * mean, spec)
    unsigned = spec.replace("+", "")
    return text if len(values) < 2 else f"{text} ± {format(scale * std, unsigned)}"


def _pct(values: list[float]) -> str:
    return mean_std_text(values, 100)


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
            bucket.append({**run_numbers(run["summary"], run.get("block", col)), "seed": run["seed"]})
    # in the axes' value order (first axis slowest), as one grid's cells come; for several grids
    # a value that only a later grid has sorts after the earlier grids' values of its axis
    order = {a: {str(v): i for i, v in enumerate(axes[a])} for a in row_axes}
    rows.sort(key=lambda r: tuple(order[a].get(str(v), len(order[a])) for a, v in zip(row_axes, r)))
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
        lines += _bounds_lines(f"**{col}**: ASR after", row_axes, met, missed, asr_max, acc_drop_max)
    return lines


def _bounds_lines(head: str, row_axes, met: list[str], missed: list[str], asr_max: float, acc_drop_max: float
                  ) -> list[str]:
    """The Markdown of one column's check: how many rows meet both bounds, and which do not."""
    return [f"{head} < {100 * asr_max:g}% with < {100 * acc_drop_max:g} pt clean-accuracy loss in {len(met)} of "
            f"{len(met) + len(missed)} rows ({' x '.join(row_axes) or 'all'}).",
            "", f"- not met: {'; '.join(missed) if missed else 'none'}", ""]


def robust_check(row_axes, rows, cols, groups, asr_max: float = 0.05, acc_drop_max: float = 0.005,
                 baseline: str = "fedavg") -> list[str]:
    """The same bounds for the training-time defenses (``robust_columns``), per row where both
    the defense and ``baseline`` ran: mean ASR < ``asr_max`` and a mean clean accuracy less than
    ``acc_drop_max`` below the baseline's trained models of that row and of the same seeds (FedAvg
    under the same attack: what the defense costs, as a post-training defense's loss is measured
    against the model it repairs; all of the baseline's seeds where it has none of the defense's).
    Returns Markdown lines (empty without a baseline or robust column)."""
    if baseline not in cols:
        return []
    lines = []
    for col in robust_columns(cols, groups, baseline):
        met, missed = [], []
        for row in rows:
            measured = _against_baseline(groups, row, col, baseline)
            if measured is None:
                continue
            asr, drop = measured
            text = f"{' / '.join(row) or 'all'} (ASR {100 * asr:.1f}%, ACC {round(-100 * drop, 1) + 0.0:+.1f} pt)"
            (met if asr < asr_max and drop < acc_drop_max else missed).append(text)
        if met or missed:
            head = f"**{col}** (during training; ACC against {baseline}'s trained models of the row and seeds): ASR"
            lines += _bounds_lines(head, row_axes, met, missed, asr_max, acc_drop_max)
    return lines


def _against_baseline(groups, row, col, baseline: str = "fedavg") -> Optional[tuple[float, float]]:
    """(mean ASR, mean clean-accuracy loss) of a training-time defense in one row, the loss against
    ``baseline``'s trained models of that row and of the same seeds (all of the baseline's seeds
    where it has none of the defense's); None where either has no run."""
    nums = [n for n in groups.get((row, col), []) if "asr" in n and "acc" in n]
    base = [n for n in groups.get((row, baseline), []) if "acc" in n]
    if not nums or not base:
        return None
    seeds = {n.get("seed") for n in nums}
    same_seeds = [n for n in base if n.get("seed") in seeds] or base
    return (mean_std([n["asr"] for n in nums])[0],
            mean_std([n["acc"] for n in same_seeds])[0] - mean_std([n["acc"] for n in nums])[0])


def headline_table(row_axes, rows, cols, groups, best: Optional[dict] = None, asr_max: float = 0.05,
                   acc_drop_max: float = 0.005, baseline: str = "fedavg") -> str:
    """A compact table of the chosen columns ``cols``. A training column reads "ACC / ASR" (%), a
    post-training column "ACC change (pt) / ASR after (%)" against the model it repaired, each
    mean ± std over seeds; with ``best`` (``best_robust``) a last column names the row's best
    training-time defense with its ACC / ASR. Bold marks a mean that misses the paper's bounds:
    ASR >= ``asr_max``, or a loss >= ``acc_drop_max`` (for a training-time defense, against
    ``baseline``'s trained models of the row and seeds, as in ``robust_check``). Rows where none
    of ``cols`` has a finished run are left out."""
    def ms(values, digits, sign=""):  # percent (points); the std unsigned
        return mean_std_text(values, 100, f"{sign}.{digits}f")
    def bold(text, miss):
        return f"**{text}**" if miss else text
    def trained(row, col):
        nums = [n for n in groups.get((row, col), []) if "acc" in n and "asr" in n]
        if not nums:
            return "–"
        rule = col != baseline  # the baseline itself is the reference, not checked
        measured = _against_baseline(groups, row, col, baseline) if rule else None
        asr = mean_std([n["asr"] for n in nums])[0]
        return (f"{bold(ms([n['acc'] for n in nums], 2), measured is not None and measured[1] >= acc_drop_max)} / "
                f"{bold(ms([n['asr'] for n in nums], 1), rule and asr >= asr_max)}")
    def repaired(nums):
        nums = [n for n in nums if "acc_after" in n and "acc_before" in n]
        if not nums:
            return "–"
        change = [n["acc_after"] - n["acc_before"] for n in nums]
        asr = [n["asr_after"] for n in nums if "asr_after" in n]
        acc_text = bold(ms(change, 2, "+"), -mean_std(change)[0] >= acc_drop_max)
        asr_text = bold(ms(asr, 1), mean_std(asr)[0] >= asr_max) if asr else "–"
        return f"{acc_text} / {asr_text}"
    extra = ["best robust aggregator"] if best else []
    head = [*row_axes, *cols, *extra] if row_axes else ["", *cols, *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if not any(groups.get((row, col)) for col in cols):
            continue  # nothing finished in the row yet (the full table lists it)
        cells = []
        for col in cols:
            nums = groups.get((row, col), [])
            post = nums and all("acc_after" in n for n in nums)
            cells.append(repaired(nums) if post else trained(row, col))
        if best:
            c, _ = best.get(row, ("", []))
            cells.append(f"{c}: {trained(row, c)}" if c else "–")
        lines.append("| " + " | ".join([*(row or ("all",)), *cells]) + " |")
    return "\n".join(lines)


class HeadlineError(ValueError):
    """A ``--headline`` column that the report does not have."""


def check_headline(headline: list[str], cols: list[str]) -> None:
    unknown = [c for c in headline if c not in cols]
    if unknown:
        raise HeadlineError(f"--headline: no column {', '.join(map(repr, unknown))}; the report's columns: "
                            f"{', '.join(cols)}")


def flain_table(row_axes, rows, cols, groups) -> str:
    """Per row and FLAIN-like column (one with a threshold ``k``): ASR after, clean-accuracy
    change, k and flipped neurons, mean ± std over seeds. Empty when no column has a k."""
    flain_cols = [c for c in cols if any("k" in n for r in rows for n in groups.get((r, c), []))]
    if not flain_cols:
        return ""
    def ms(values, scale=1.0, spec=".1f"):
        return mean_std_text(values, scale, spec)
    head = [*row_axes, "column", "seeds", "ASR after (%)", "ACC change (pt)", "k", "flipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for c in flain_cols:
            nums = [n for n in groups.get((row, c), []) if "k" in n]
            if not nums:
                continue
            lines.append("| " + " | ".join([*row, c, str(len(nums)),
                                             ms([n["asr_after"] for n in nums if "asr_after" in n], 100),
                                             ms([n["acc_after"] - n["acc_before"] for n in nums], 100, "+.2f"),
                                             ms([n["k"] for n in nums], 1, ".4f"),
                                             ms([n["flipped_neurons"] for n in nums if "flipped_neurons" in n], 1, ".0f")])
                         + " |")
    return "\n".join(lines)


def accuracy_floor(row_axes, rows, cols, groups, floor: float = 0.985) -> list[str]:
    """Per training column (not a post-training pseudo-column): the trained models' mean clean
    accuracy per row against ``floor`` (the issue's "FedAvg reaches >= 98.5%" before FLAIN)."""
    lines = []
    for c in (c for c in cols if "+" not in c):
        per_row = [(r, mean_std([n["acc"] for n in groups.get((r, c), []) if "acc" in n])[0]) for r in rows]
        per_row = [(r, a) for r, a in per_row if not math.isnan(a)]
        if not per_row:
            continue
        low = [f"{' / '.join(r)} ({100 * a:.2f}%)" for r, a in per_row if a < floor]
        worst = min(a for _, a in per_row)
        lines.append(f"**{c}** trained clean accuracy: mean {100 * statistics.fmean(a for _, a in per_row):.2f}%, "
                     f"lowest {100 * worst:.2f}% over {len(per_row)} rows; below {100 * floor:g}%: "
                     f"{'; '.join(low) if low else 'none'}.")
    return lines


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
        seeded = [nums for nums in per_row if len(nums) > 1]  # a spread needs >= 2 seeds
        sd_asr = (f"{100 * statistics.fmean(mean_std([n['asr_after'] for n in nums])[1] for nums in seeded):.1f}"
                  if seeded else "– (1 seed)")
        ks = [mean_std([n["k"] for n in nums if "k" in n])[1] for nums in seeded if sum("k" in n for n in nums) > 1]
        sd_k = f"{statistics.fmean(ks):.4f}" if ks else "–"
        lines.append(f"| {c} | {len(per_row)} | {100 * asr:.1f} | {100 * dacc:+.2f} | {sd_asr} | {sd_k} |")
    return "\n".join(lines) if any_row else ""


def robust_columns(cols, groups, baseline: str = "fedavg") -> list[str]:
    """The training-time defenses among the columns: a column value with no post-training
    pseudo-columns (``x+block``), whose runs carry no post-training block, other than
    ``baseline`` (FedAvg, the undefended reference)."""
    def trained_only(c):
        nums = [n for key, ns in groups.items() if key[1] == c for n in ns]
        return nums and not any("acc_after" in n for n in nums)
    return [c for c in cols if "+" not in c and c != baseline and not any(o.startswith(c + "+") for o in cols)
            and trained_only(c)]


def best_robust(rows, cols, groups, baseline: str = "fedavg", asr_max: float = 0.05,
                acc_drop_max: float = 0.005) -> dict[tuple[str, ...], tuple[str, list]]:
    """Per row: the best robust column (``robust_columns``). Those that meet both of the paper's
    bounds in the row (mean ASR < ``asr_max`` and a clean-accuracy loss < ``acc_drop_max``
    against ``baseline``'s trained models of the row and seeds, as in ``robust_check``) come
    first; then the lowest mean ASR over its seeds, ties broken by the higher mean clean accuracy:
    {row: (column, its numbers)}. Empty when the grid has no ``baseline`` column or no robust
    column."""
    if baseline not in cols:  # "robust" is relative to the undefended FedAvg of the same grid
        return {}
    candidates = robust_columns(cols, groups, baseline)
    best = {}
    for row in rows:
        scored = []
        for c in candidates:
            nums = [n for n in groups.get((row, c), []) if "asr" in n and "acc" in n]
            if nums:
                asr, acc = mean_std([n["asr"] for n in nums])[0], mean_std([n["acc"] for n in nums])[0]
                measured = _against_baseline(groups, row, c, baseline)  # (ASR, loss); None without FedAvg
                meets = measured is not None and asr < asr_max and measured[1] < acc_drop_max
                scored.append((not meets, asr, -acc, c, nums))
        if scored:
            *_, c, nums = min(scored, key=lambda t: t[:3])
            best[row] = (c, nums)
    return best


def markdown_table(row_axes, rows, cols, groups, best: Optional[dict] = None) -> str:
    """The results table; with ``best`` (``best_robust``) a last column "best robust aggregator"
    shows that row's best training-time defense and its ACC / ASR."""
    extra = ["best robust aggregator"] if best else []
    head = [*row_axes, *cols, *extra] if row_axes else ["", *cols, *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [format_cell(groups.get((row, c), [])) for c in cols]
        if best:
            c, nums = best.get(row, ("", []))
            cells.append(f"{c}: {format_cell(nums)}" if c else "–")
        lines.append("| " + " | ".join([*(row or ("all",)), *cells]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, row_axes, rows, cols, groups) -> None:
    keys = [f"{m}{s}" for s in ("", "_before", "_after") for m in METRICS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*row_axes, "column", "seeds", "seed_ids", "post_training",
                    *(f"{k}_{s}" for k in keys for s in ("mean", "std"))])
        for row in rows:
            for col in cols:
                numbers = groups.get((row, col), [])
                post = next((n["post"] for n in numbers if "post" in n), "")
                ids = " ".join(str(i) for i in sorted({n["seed"] for n in numbers if n.get("seed") is not None}))
                stats = [mean_std([n[k] for n in numbers if k in n]) for k in keys]
                w.writerow([*row, col, len(numbers), ids, post, *(f"{v:.6g}" for ms in stats for v in ms)])


# ----------------------------------------------------------------------------- plots
def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), sharey: bool = False):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)


def read_curve(run_dir: Path, metric: str) -> dict[int, float]:
    """round -> metric from metrics.csv, the round exactly as in its 0-based ``round`` column
    (rows without the metric, and post-training rows, skipped): ``fedsim.curves.read_curve``."""
    return run_curves.read_curve(run_dir, metric)


def column_styles(cols: list[str]) -> dict[str, dict[str, Any]]:
    """How each column is drawn. A column value gets its own colour, line style and marker; a
    post-training pseudo-column ``x+block`` (the same training run as ``x``) gets ``x``'s colour,
    a dotted line and an end marker of its own, and ``base`` = ``x``."""
    out: dict[str, dict[str, Any]] = {}
    n_base = 0
    for col in cols:
        base = max((b for b in cols if b != col and col.startswith(b + "+")), key=len, default=None)
        if base is None:
            out[col] = {"base": None, "color": color(n_base), "linestyle": LINESTYLES[n_base % len(LINESTYLES)],
                        "marker": MARKERS[n_base % len(MARKERS)], "end_marker": END_MARKERS[0]}
            n_base += 1
        else:
            j = sum(1 for c in out.values() if c["base"] == base)
            out[col] = {"base": base, "color": out[base]["color"], "linestyle": ":",
                        "marker": END_MARKERS[(1 + j) % len(END_MARKERS)],
                        "end_marker": END_MARKERS[(1 + j) % len(END_MARKERS)]}
    return out


def _runs_of(runs, row_axes, row, column: str, col: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["summary"] is not None and r["values"].get(column, "result") == col
            and tuple(r["values"][a] for a in row_axes) == row]


def plot_curves(out: Path, runs, row_axes, rows, cols, column: str) -> list[Path]:
    """One figure per row: ACC and ASR per round (mean over seeds), one line per column value;
    each column's post-training results (mean over seeds) as markers at its last round."""
    styles = column_styles(cols)
    paths = []
    for row in rows:
        if not any(r["summary"] is not None for col in cols for r in _runs_of(runs, row_axes, row, column, col)):
            continue  # nothing of this row has finished: no figure
        fig, ax = _figure(2, size=(5.4, 3.8))
        all_steps: list[int] = []
        ends = []
        for col in cols:
            st, col_runs = styles[col], _runs_of(runs, row_axes, row, column, col)
            if not col_runs:
                continue
            dirs = list(dict.fromkeys(r["run_dir"] for r in col_runs))
            last = [x for x in (run_curves.last_round(r["run_dir"], r["summary"]) for r in col_runs) if x is not None]
            for i, metric in enumerate(METRICS):
                if st["base"] is not None:  # the same training curve as the base column: drawn there
                    continue
                curves = [read_curve(d, metric) for d in dirs]
                steps = sorted(set().union(*curves)) if curves else []
                ys = [100 * statistics.fmean([c[s] for c in curves if s in c]) for s in steps]
                if steps:
                    all_steps += steps
                    ax[0, i].plot(steps, ys, label=col, color=st["color"], linestyle=st["linestyle"],
                                  marker=st["marker"], markersize=3.5, linewidth=1.4,
                                  markevery=max(1, len(steps) // 12))
            numbers = [run_numbers(r["summary"], r.get("block", col)) for r in col_runs]
            numbers = [n for n in numbers if "acc_after" in n]
            if numbers and last:
                post = numbers[0].get("post", "")
                label = f"{col} (after)" if st["base"] is not None or post == col else f"{col} (after {post})"
                ends.append((max(last), label, st, numbers))
        span = max(4, max(all_steps) - min(all_steps)) if all_steps else 4
        for j, (x, label, st, numbers) in enumerate(ends):  # side by side at the last round
            dodge = 0.012 * span * (j - (len(ends) - 1) / 2)
            for i, metric in enumerate(METRICS):
                mean = mean_std([n[f"{metric}_after"] for n in numbers if f"{metric}_after" in n])[0]
                if not math.isnan(mean):
                    ax[0, i].plot([x + dodge], [100 * mean], linestyle="none", marker=st["end_marker"],
                                  color=st["color"], markersize=9, markeredgecolor="k", markeredgewidth=0.6,
                                  zorder=5, label=label)
            all_steps.append(x)
        for i, metric in enumerate(METRICS):
            ax[0, i].set(xlabel="round (0-based, as in metrics.csv)", ylabel=f"{metric.upper()} (%)",
                         title=" ".join(row) or "all")
            integer_rounds(ax[0, i], all_steps)
            ax[0, i].grid(alpha=0.3)
        ax[0, 1].set_ylim(-2, 102)
        if ax[0, 0].get_legend_handles_labels()[0]:
            ax[0, 0].legend(fontsize=7)
        if ax[0, 1].get_legend_handles_labels()[0]:
            ax[0, 1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / "curves" / f"{_slug('_'.join(row) or 'all')}.png"))
    return paths


def _as_x(value: str, index: int) -> float:
    try:
        return float(value)
    except ValueError:  # a non-numeric axis value: its position
        return float(index)


def plot_asr_vs_x(out: Path, row_axes, rows, cols, groups, x_axis: str = "mcr") -> Optional[Path]:
    """ASR (after the post-training defense where there is one) against ``x_axis``: mean ± std
    over seeds, one panel per combination of the other row axes, one shared 0-100 % y-scale."""
    if x_axis not in row_axes:
        return None
    xi = row_axes.index(x_axis)
    panels = list(dict.fromkeys(row[:xi] + row[xi + 1:] for row in rows))
    x_values = list(dict.fromkeys(row[xi] for row in rows))
    styles = column_styles(cols)
    fig, ax = _figure(len(panels), size=(4.6, 3.8), sharey=True)
    for p, panel in enumerate(panels):
        prow = [r for r in rows if r[:xi] + r[xi + 1:] == panel]
        for col in cols:
            st = styles[col]
            pts = []
            for r in prow:
                vals = [n.get("asr_after", n.get("asr", math.nan)) for n in groups.get((r, col), [])]
                mean, std = mean_std(vals)
                if not math.isnan(mean):
                    pts.append((_as_x(r[xi], x_values.index(r[xi])), 100 * mean, 100 * std))
            if pts:
                xs, ys, es = zip(*pts)
                ax[0, p].errorbar(xs, ys, yerr=es, label=col, color=st["color"], linestyle=st["linestyle"],
                                  marker=st["marker"], markersize=5, capsize=3, linewidth=1.2)
        ax[0, p].set(xlabel=x_axis.upper(), title=" ".join(panel) or "all", ylim=(-3, 103))
        ax[0, p].grid(alpha=0.3)
    ax[0, 0].set_ylabel("ASR (%), mean ± std over seeds")
    if ax[0, 0].get_legend_handles_labels()[0]:
        ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / f"asr_vs_{x_axis}.png")


def threshold_curves(summary: dict[str, Any]) -> list[tuple[str, Optional[str], dict[str, list], Any]]:
    """(block, layer or None, curve {k, aux_acc, flipped}, chosen k) for every post-training block
    with a threshold curve; ``curve`` may be one dict or a list of dicts (one per layer)."""
    out = []
    for name, block in post_blocks(summary).items():
        curve = block.get("curve")
        several = isinstance(curve, list)
        layers = block.get("layers") if isinstance(block.get("layers"), list) else []
        ks = block.get("k")
        for i, c in enumerate(curve if several else [curve]):
            if isinstance(c, dict) and c.get("k") and c.get("aux_acc"):
                layer = (layers[i] if i < len(layers) else f"layer {i}") if several else None
                k = ks[i] if isinstance(ks, list) and i < len(ks) else (None if isinstance(ks, list) else ks)
                out.append((name, layer, c, k))
    return out


def plot_flain_threshold(out: Path, runs, row_axes: Optional[list[str]] = None,
                         column: str = "defense") -> Optional[Path]:
    """FLAIN's search per table row (one panel each; all runs in one panel without ``row_axes``):
    aux accuracy against threshold k, one line per seed of every (column, block, layer), the
    chosen k circled. None when no run has a curve."""
    lines = []  # (row, label, curve, k)
    for r in runs:
        col = r["values"].get(column, "result")
        row = tuple(r["values"].get(a, "") for a in row_axes) if row_axes is not None else ()
        for block, layer, c, k in threshold_curves(r["summary"] or {}):
            label = col if col == block or col.endswith("+" + block) else f"{col}+{block}"
            lines.append((row, label + (f" [{layer}]" if layer else ""), c, k))
    if not lines:
        return None
    panels = list(dict.fromkeys(row for row, *_ in lines))
    labels = list(dict.fromkeys(label for _, label, *_ in lines))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, ax = _figure(ncols, nrows, size=(5.2, 3.8))
    for p, panel in enumerate(panels):
        a = ax[p // ncols, p % ncols]
        seen = set()
        for row, label, c, k in lines:
            if row != panel:
                continue
            i = labels.index(label)
            st = {"color": color(i), "linestyle": LINESTYLES[i % len(LINESTYLES)]}
            xs, ys = list(c["k"]), [100 * y for y in c["aux_acc"]]
            a.plot(xs, ys, linewidth=1.1, label=label if label not in seen else "_nolegend_",
                   marker="." if len(xs) <= 40 else None, markersize=3, **st)
            seen.add(label)
            if isinstance(k, (int, float)) and xs:
                at = min(range(len(xs)), key=lambda j: abs(xs[j] - k))
                a.plot([xs[at]], [ys[at]], linestyle="none", marker="o", markersize=8, markerfacecolor="none",
                       markeredgecolor=st["color"], markeredgewidth=1.5, label="_nolegend_")
                seen.add("chosen k")
        if "chosen k" in seen:  # one legend entry for the circles, in black
            a.plot([], [], linestyle="none", marker="o", markersize=8, markerfacecolor="none", markeredgecolor="k",
                   markeredgewidth=1.5, label="chosen k (circled)")
        a.set(xlabel="threshold k (mean input-neuron activation, clean aux)", ylabel="aux ACC (%)",
              title=" ".join(panel) or "all")
        a.grid(alpha=0.3)
        a.legend(fontsize=6)
    for p in range(len(panels), nrows * ncols):
        ax[p // ncols, p % ncols].set_visible(False)
    fig.suptitle("FLAIN threshold search: aux accuracy vs k (one line per seed)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "flain_threshold.png")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=_-]", "-", text)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- entry point
def build_report(grid_dir, out: Optional[str] = None, column: str = "defense", plots: bool = True,
                 where: Optional[list[str]] = None, headline: Optional[list[str]] = None) -> dict[str, Any]:
    """Writes README.md, results.csv and the plots into ``out`` (default <grid_dir>/report).
    ``grid_dir`` may be a list of grid directories: their runs are reported together. A single
    run directory (summary.json, no cells.json) gets ``build_run_report``. ``where`` keeps only
    the runs that match every filter (``select``). ``headline`` (column names) adds a compact
    table of those columns (``headline_table``) at the top of README.md and makes the README
    block that table with the checks of its columns only (``claim_check``, ``robust_check``)."""
    dirs = [grid_dir] if isinstance(grid_dir, (str, Path)) else list(grid_dir)
    if len(dirs) == 1 and is_run_dir(dirs[0]):
        return build_run_report(dirs[0], out, plots)
    grid, out_dir = Path(dirs[0]), Path(out) if out else Path(dirs[0]) / "report"
    axes, raw_runs, commits = load_grids([str(d) for d in dirs])
    if where:
        axes, raw_runs = select(axes, raw_runs, where)
    runs = expand_post(raw_runs, column)
    row_axes, rows, cols, groups = aggregate(axes, runs, column)
    if headline:
        check_headline(headline, cols)
    out_dir.mkdir(parents=True, exist_ok=True)
    best = best_robust(rows, cols, groups)
    table = markdown_table(row_axes, rows, cols, groups, best)
    head_lines = []
    if headline:
        head_lines = ["Headline: a training column reads ACC / ASR (%), a post-training column the clean-accuracy "
                      "change (pt) / ASR after (%) of the model it repaired, mean ± std over seeds; the best "
                      "robust aggregator is the training-time rule that meets both bounds with the lowest mean "
                      "ASR, or if none does the lowest mean ASR (then the highest ACC); **bold**: misses ASR < 5% or a loss < 0.5 pt (a training-time rule's against "
                      "FedAvg's trained models of the row and seeds); rows with no finished run are left out.", "",
                      headline_table(row_axes, rows, headline, groups, best), ""]
    write_csv(out_dir / "results.csv", row_axes, rows, cols, groups)
    figures = []
    if plots:
        figures = plot_curves(out_dir, runs, row_axes, rows, cols, column)
        figures += [p for p in (plot_asr_vs_x(out_dir, row_axes, rows, cols, groups),
                                plot_flain_threshold(out_dir, runs, row_axes, column)) if p is not None]
    done = sum(r["summary"] is not None for r in raw_runs)
    names = " + ".join(commits) or grid.name
    text = [f"# Grid {names}", "",
            f"{done} of {len(raw_runs)} runs finished. Cells: ACC / ASR in %, mean ± std over seeds; "
            "post-training defenses show before -> after (`x+name`: post-training callback `name` of the "
            "same `x` run).", ""]
    text += [f"Code: {name} ran at commit(s) {', '.join(c) or 'unrecorded'}." for name, c in commits.items()]
    machines = hardware_text(raw_runs)
    text += [f"Hardware: {machines}."] if machines else []
    text += ["", *head_lines, table, "", *accuracy_floor(row_axes, rows, cols, groups), ""]
    claim = claim_check(row_axes, rows, cols, groups)
    if claim:
        text += ["## Post-training defenses against the FLAIN paper's claim (ASR < 5%, clean-accuracy loss "
                 "< 0.5 pt)", "", *claim]
    robust = robust_check(row_axes, rows, cols, groups)
    if robust:
        text += ["## Training-time defenses against the same bounds (ASR < 5%, clean accuracy < 0.5 pt below "
                 "FedAvg's)", "", *robust]
    ftable = flain_table(row_axes, rows, cols, groups)
    if ftable:
        text += ["## FLAIN per row: ASR after, clean-accuracy change, threshold k, flipped neurons "
                 "(mean ± std over seeds)", "", ftable, "", "Over all rows:", "",
                 summary_by_column(rows, cols, groups), ""]
    text += [f"![{p.stem}]({p.relative_to(out_dir)})" for p in figures if p.parent == out_dir]
    per_row = [p for p in figures if p.parent == out_dir / "curves"]
    if per_row:
        text += ["", "Per-round curves (x: round as in metrics.csv, 0-based; markers at the last round: "
                 "post-training results): " + ", ".join(f"[{p.stem}]({p.relative_to(out_dir).as_posix()})"
                                                         for p in per_row)]
    (out_dir / "README.md").write_text("\n".join(text) + "\n")
    code = "; ".join(n + " at " + (", ".join(c) or "unrecorded") for n, c in commits.items())
    command = " ".join(["python launch/report.py", *(str(d) for d in dirs), "--out", str(out_dir),
                        *(f"--where '{w}'" for w in where or []),
                        *(["--headline", ",".join(headline)] if headline else [])])
    code += f"; hardware: {machines}" if machines else ""
    block = [f"Generated by `{command}` from {done} of {len(raw_runs)} runs ({code}). Full table and plots: "
             f"[{out_dir}]({out_dir}/README.md).", ""]
    if headline:
        block += [*head_lines, *claim_check(row_axes, rows, headline, groups),
                  *robust_check(row_axes, rows, headline, groups)]
    else:
        block += [*accuracy_floor(row_axes, rows, cols, groups), "", *claim, *robust]
    if ftable and not headline:
        block += ["Over all rows (mean of the per-row means; spread = mean of the per-row std over seeds):", "",
                  summary_by_column(rows, cols, groups)]
    return {"table": table, "rows": rows, "columns": cols, "finished": done, "runs": len(raw_runs), "figures": figures,
            "claim": claim, "axes": axes, "records": runs, "commits": commits, "expanded": len(runs),
            "readme_block": "\n".join(block).rstrip() + "\n", "name": list(commits)[0] if commits else grid.name,
            "string_columns": [*row_axes, "column", "seed_ids", "post_training"]}


def hardware_text(runs) -> str:
    """"<cpu> (<kernel level>) xN, ..." over the finished runs (a GPU by its name), in first-seen order;
    empty when no run records its hardware (runs before provenance had it)."""
    counts: dict[str, int] = {}
    for run in runs:
        if run["summary"] is None:
            continue
        hw = run["summary"].get("provenance", {}).get("hardware")
        label = "unrecorded" if not hw else hw.get("gpu") or f"{hw.get('cpu')} ({hw.get('cpu_capability')})"
        counts[label] = counts.get(label, 0) + 1
    if set(counts) <= {"unrecorded"}:
        return ""
    return ", ".join(f"{label} x{n}" for label, n in counts.items())


# ----------------------------------------------------------------------------- one run
def is_run_dir(path) -> bool:
    """A run directory: summary.json and no cells.json."""
    return (Path(path) / "summary.json").is_file() and not (Path(path) / "cells.json").is_file()


def _models(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any], Optional[dict[str, Any]]]]:
    """(name, figures, post-training block or None): the trained model, then each block."""
    trained = summary["trained"] if "trained" in summary else summary.get("final", {})
    out = [("trained", {m: trained.get(m) for m in ("acc", "asr", "aux_acc")}, None)]
    for name, block in post_blocks(summary).items():
        out.append((name, {m: block.get(f"{m}_after") for m in ("acc", "asr", "aux_acc")}, block))
    return out


def _fmt(value: Any, scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    if isinstance(value, list):
        return ", ".join(_fmt(v, scale, fmt) for v in value)
    return fmt.format(scale * value) if isinstance(value, (int, float)) and not math.isnan(value) else "–"


def run_table(summary: dict[str, Any]) -> tuple[str, list[list[Any]]]:
    """(Markdown table, CSV rows with a header) of one run: the trained model and each
    post-training defense's result, the final model marked."""
    final = (summary.get("final") or {}).get("model") if "trained" in summary else None
    head = ["model", "ACC (%)", "ASR (%)", "aux ACC (%)", "ACC change (pt)", "ASR change (pt)", "k", "flipped neurons"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_rows: list[list[Any]] = [["model", "final", "acc", "asr", "aux_acc", "acc_change", "asr_change", "k",
                                  "flipped_neurons", "total_neurons"]]
    for name, nums, block in _models(summary):
        block = block or {}
        d_acc = (block["acc_after"] - block["acc_before"]) if "acc_after" in block else None
        d_asr = (block["asr_after"] - block["asr_before"]) if "asr_after" in block and "asr_before" in block else None
        k, flipped, total = block.get("k"), block.get("flipped_neurons"), block.get("total_neurons")
        label = name + (" (theta_T)" if name == "trained" else "") + (" **final**" if name == final else "")
        lines.append("| " + " | ".join([label, _fmt(nums["acc"]), _fmt(nums["asr"]), _fmt(nums["aux_acc"]),
                                         _fmt(d_acc, 100, "{:+.2f}"), _fmt(d_asr, 100, "{:+.1f}"),
                                         _fmt(k, 1, "{:.4g}") if k is not None else "",
                                         f"{flipped} / {total}" if flipped is not None and total is not None
                                         else ("" if flipped is None else str(flipped))]) + " |")
        def num(v):
            if isinstance(v, list):
                return ";".join(f"{x:.6g}" if isinstance(x, (int, float)) else "" for x in v)
            return f"{v:.6g}" if isinstance(v, (int, float)) else ""
        csv_rows.append([name, str(name == final).lower() if final else "", num(nums["acc"]), num(nums["asr"]),
                         num(nums["aux_acc"]), num(d_acc), num(d_asr), num(k),
                         "" if flipped is None else str(flipped), "" if total is None else str(total)])
    return "\n".join(lines), csv_rows


def build_run_report(run_dir, out: Optional[str] = None, plots: bool = True) -> dict[str, Any]:
    """The report of one run directory (summary.json, metrics.csv): README.md with the table of the
    trained model and every post-training defense, the claim check and the plots, results.csv,
    curves.png and (when a block has a threshold curve) flain_threshold.png, into ``out``
    (default <run_dir>/report)."""
    run_dir = Path(run_dir)
    out_dir = Path(out) if out else run_dir / "report"
    summary = json.loads((run_dir / "summary.json").read_text())
    prov = summary.get("provenance") or {}
    seed = prov.get("seed", summary.get("seed", 0))
    trained = {k: v for k, v in summary.items() if k not in post_blocks(summary)}
    blocks = post_blocks(summary)
    records = [{"values": {"model": "trained"}, "seed": seed, "run_dir": run_dir, "summary": trained}]
    records += [{"values": {"model": name}, "seed": seed, "run_dir": run_dir, "summary": {**trained, name: block},
                 "block": name} for name, block in blocks.items()]
    groups = {((), name): [run_numbers({**trained, name: block}, name)] for name, block in blocks.items()}
    claim = claim_check([], [()], list(blocks), groups)
    table, csv_rows = run_table(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    figures = []
    if plots:
        figures.append(run_curves.plot_run_curves(run_dir, summary, out_dir / "curves.png"))
        threshold = plot_flain_threshold(out_dir, records, None, "model")
        if threshold is not None:
            figures.append(threshold)
    label = str(run_dir)
    git = prov.get("git") or {}
    commit = git.get("commit")
    text = [f"# Run {label}", "",
            f"{summary.get('rounds', '?')} rounds, seed {seed}; code at commit {commit or 'unrecorded'}"
            + (" (dirty)" if git.get("dirty") else "") + ". ACC / ASR / aux ACC in %; a post-training defense's "
            "row is its repaired model (changes against the trained model theta_T); **final** marks the model in "
            "final_model.pt.", "", table, ""]
    if claim:
        text += ["## Post-training defenses against the FLAIN paper's claim (ASR < 5%, clean-accuracy loss "
                 "< 0.5 pt)", "", *claim]
    text += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in figures]
    (out_dir / "README.md").write_text("\n".join(text) + "\n")
    name = _slug(f"{run_dir.parent.name}_{run_dir.name}" if run_dir.parent.name else run_dir.name)
    return {"table": table, "rows": [(r[0],) for r in csv_rows[1:]], "columns": csv_rows[0], "finished": 1,
            "runs": 1, "figures": figures, "claim": claim, "axes": {"model": [r[0] for r in csv_rows[1:]]},
            "records": records, "commits": {label: [commit] if commit else []}, "name": name,
            "group": _run_group(run_dir), "string_columns": ["model", "final"]}


def _run_group(run_dir: Path) -> Optional[str]:
    """The W&B group the run logged to (config.yaml's logger.group), if any."""
    try:
        import yaml

        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        return (config.get("logger") or {}).get("group")
    except Exception:  # no config.yaml, or one this reader does not understand
        return None


# ----------------------------------------------------------------------------- W&B
INT_COLUMNS = ("seeds", "seed", "flipped_neurons", "total_neurons")


def typed_columns(header: list[str], rows: list[list[str]], string_columns) -> list[list[Any]]:
    """CSV rows with numbers as numbers: every column outside ``string_columns`` whose cells all
    parse becomes float (int for counts; "" and nan become None); other columns stay strings."""
    keep = set(string_columns)
    out = [list(r) for r in rows]
    for j, name in enumerate(header):
        if name in keep:
            continue
        cells = [r[j] if j < len(r) else "" for r in rows]
        try:
            values = [None if c.strip() == "" else float(c) for c in cells]
        except ValueError:
            continue  # not a number column (e.g. one k per layer, "0.1;0.2"): strings
        values = [None if v is None or math.isnan(v) else v for v in values]
        if name in INT_COLUMNS:
            values = [None if v is None else int(v) for v in values]
        for r, v in zip(out, values):
            r[j] = v
    return out


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def log_wandb(grid_dir: str, out: str, result: dict[str, Any], project: str = "fedsim", mode: str = "offline",
              entity: Optional[str] = None, column: str = "defense") -> Path:
    """Logs the report as one W&B run in the grid's group (a run's own group for a one-run
    report); returns the run's local directory."""
    import wandb

    name = result.get("name")
    if name is None:
        name = json.loads((Path(grid_dir) / "cells.json").read_text()).get("name") or Path(grid_dir).name
    group = result.get("group", name)
    out_dir = Path(out)
    with open(out_dir / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    axes, runs = result["axes"], result["records"]
    string_columns = result.get("string_columns", [*[a for a in axes if a != column], "column", "post_training"])
    per_run_cols = [*axes, "seed", "acc", "asr", "post_training", "acc_before", "asr_before", "acc_after",
                    "asr_after", "k", "flipped_neurons"]
    per_run = []
    for r in runs:
        if r["summary"] is None:
            continue
        n = run_numbers(r["summary"], r.get("block", r["values"].get(column, "")))
        n["post_training"] = n.pop("post", None)
        if isinstance(n.get("flipped_neurons"), float):
            n["flipped_neurons"] = int(n["flipped_neurons"])
        per_run.append([*(str(r["values"][a]) for a in axes), int(r["seed"]),
                        *(_clean(n.get(k)) for k in per_run_cols[len(axes) + 1:])])
    run = wandb.init(project=project, entity=entity, group=group, name=f"{name}-report", job_type="report",
                     dir=str(out_dir), mode=mode, config={"grid": name, "axes": axes})
    run.log({"results": wandb.Table(columns=rows[0], data=typed_columns(rows[0], rows[1:], string_columns)),
             "runs": wandb.Table(columns=per_run_cols, data=per_run),
             **{f"plots/{p.relative_to(out_dir).with_suffix('').as_posix()}": wandb.Image(str(p))
                for p in result["figures"]}})
    run.summary.update({"finished": result["finished"], "runs": result["runs"]})
    local = Path(run.dir).parent
    run.finish()
    return local


def read_results(path: Path) -> tuple[list[str], dict[tuple[str, ...], dict[str, str]]]:
    """An earlier report's results.csv (or the folder holding it): (key columns, rows by key). The key
    is every column before ``seeds`` (the row axes and ``column``); values stay the strings written
    (6 significant digits), so equal strings are equal numbers as far as the file can tell."""
    path = path / "results.csv" if path.is_dir() else path
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if "seeds" not in header:
            raise ValueError(f"{path}: not a report's results.csv (no 'seeds' column)")
        keys = header[:header.index("seeds")]
        return keys, {tuple(r[k] for k in keys): r for r in reader}


def compare_results(old: dict[tuple[str, ...], dict[str, str]], new: dict[tuple[str, ...], dict[str, str]],
                    label: str, limit: int = 10) -> tuple[list[str], dict[str, int]]:
    """Rows of two reports' results.csv side by side. A row with finished runs in both and the same
    seeds (their ``seed_ids`` where both files list them, else their number) is ``identical`` when
    every number is (as written), else it ``differs`` (its largest change named, a mean's before a
    std's, ACC/ASR in pt); other seeds are ``not comparable``; rows with runs in only one of them are
    counted apart. Returns the report lines and the counts."""
    def seeds(row):
        return int(row["seeds"]) if row and row.get("seeds", "").isdigit() else 0

    def same_seeds(a, b):
        if "seed_ids" in a and "seed_ids" in b:
            return a["seed_ids"] == b["seed_ids"]
        return seeds(a) == seeds(b)

    counts = {"identical": 0, "differs": 0, "not comparable": 0, "only earlier": 0, "only here": 0}
    changed = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = seeds(old.get(key)), seeds(new.get(key))
        if not a and not b:
            continue
        if not b or not a:
            counts["only earlier" if a else "only here"] += 1
            continue
        if not same_seeds(old[key], new[key]):
            counts["not comparable"] += 1
            continue
        diffs = [(abs(float(new[key][k]) - float(old[key][k])), k, old[key][k], new[key][k])
                 for k in old[key] if k.endswith(("_mean", "_std")) and k in new[key] and old[key][k] != new[key][k]]
        if not diffs:
            counts["identical"] += 1
            continue
        counts["differs"] += 1
        _, k, was, now = max(diffs, key=lambda t: (t[1].endswith("_mean"), not math.isnan(t[0]), t[0]))
        scale = 100.0 if k.startswith(("acc", "asr")) else 1.0
        changed.append(f"- {' / '.join(key)} ({b} seed{'s' if b > 1 else ''}): {k} {float(was) * scale:.6g} -> "
                       f"{float(now) * scale:.6g}" + (f" ({len(diffs)} numbers differ)" if len(diffs) > 1 else ""))
    both = counts["identical"] + counts["differs"]
    listed = all("seed_ids" in r for r in old.values())
    lines = [f"Compared with {label}: {both} rows with the same seeds in both, {counts['identical']} "
             f"identical in every number and {counts['differs']} differ; {counts['not comparable']} with "
             f"other seeds, {counts['only here']} only here, {counts['only earlier']} only there."
             + ("" if listed else " That file does not list its seeds (an older report): rows with the same "
                "number of seeds were compared; restrict this report to its seeds with --where seed=...")]
    lines += changed[:limit] + ([f"- ... and {len(changed) - limit} more"] if len(changed) > limit else [])
    return lines, counts


def _fail(message: str) -> None:
    """One line on stderr, exit status 2 (like argparse's usage errors), no traceback."""
    print(f"report.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def select(axes: dict[str, list[str]], runs: list[dict[str, Any]], where: list[str]):
    """(axes, runs) restricted to the runs whose axis values (and seed: ``seed=0,1``) pass every
    ``where`` filter (``experiments.parse_where``); an axis keeps the values that still occur, in
    their order."""
    seeds = sorted({str(r["seed"]) for r in runs}, key=int)
    filters = [parse_where(text, {**axes, "seed": seeds}) for text in where]
    runs = [r for r in runs if passes(r["values"], r["seed"], filters)]
    seen = {a: {str(r["values"].get(a)) for r in runs} for a in axes}
    return {a: [v for v in vs if v in seen[a]] for a, vs in axes.items()}, runs


def check_dirs(dirs: list[str]) -> bool:
    """True for one run directory, False for grid directories; exits with status 2 otherwise."""
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            _fail(f"{d}: no such directory")
        if not (path / "cells.json").is_file() and not (path / "summary.json").is_file():
            _fail(f"{d}: neither cells.json (a grid: run launch/experiments.py on it first) nor summary.json "
                  "(a finished run) found")
    run_dirs = [d for d in dirs if is_run_dir(d)]
    if run_dirs and len(dirs) > 1:
        _fail(f"{run_dirs[0]}: a run directory (summary.json, no cells.json) is reported alone, "
              "not together with other directories")
    return bool(run_dirs)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grid_dir", nargs="+", help="the grid's out_dir (holds cells.json); several are reported "
                        "together; or one run directory (holds summary.json)")
    parser.add_argument("--out", default=None, help="output folder (default: <grid_dir>/report)")
    parser.add_argument("--columns", default="defense", help="the axis shown as columns")
    parser.add_argument("--no_plots", action="store_true", help="only the table and the CSV")
    parser.add_argument("--wandb", action="store_true", help="also log the report as a W&B run in the grid's group")
    parser.add_argument("--wandb_project", default="fedsim", help="W&B project (with --wandb)")
    parser.add_argument("--wandb_entity", default=None, help="W&B entity (with --wandb)")
    parser.add_argument("--wandb_mode", default="offline", choices=["offline", "online", "disabled"],
                        help="W&B mode (with --wandb); offline runs sync later with `wandb sync`")
    parser.add_argument("--readme", default=None,
                        help="also write the claim check into this Markdown file, between the lines "
                             "'<!-- report:<name> -->' and '<!-- /report:<name> -->'")
    parser.add_argument("--where", action="append", default=[], metavar="AXIS=V1,V2",
                        help="keep only the runs with these values of an axis (AXIS!=V1,V2: without them); "
                             "repeatable, e.g. --where mcr=0.2,0.4 --where 'attack!=dba'")
    parser.add_argument("--headline", default=None, metavar="COL1,COL2",
                        help="a compact table of these columns (and the best robust aggregator) at the top of "
                             "the report; with --readme the block is that table and the checks of its columns")
    parser.add_argument("--name", default=None,
                        help="the block's <name> for --readme (default: the first grid's name)")
    parser.add_argument("--compare", default=None, metavar="CSV",
                        help="an earlier report's results.csv (or its folder): say which rows this report "
                             "reproduces in every number, which differ and by how much")
    args = parser.parse_args(argv)
    one_run = check_dirs(args.grid_dir)
    earlier = None
    if args.compare:  # read before anything is written: --out may be the folder it names
        if one_run:
            _fail("--compare is for grids; a run directory is reported as it is")
        try:
            earlier = read_results(Path(args.compare))
        except (OSError, ValueError, csv.Error) as err:
            _fail(f"--compare: {err.strerror + ': ' + str(err.filename) if isinstance(err, OSError) else err}")
    out = args.out or str(Path(args.grid_dir[0]) / "report")
    if one_run and (args.where or args.headline):
        _fail(f"{'--where' if args.where else '--headline'} is for grids; a run directory is reported as it is")
    if one_run:
        result = build_run_report(args.grid_dir[0], out, not args.no_plots)
    else:
        try:  # the filters are checked against the grids' axes before anything is written
            headline = [c.strip() for c in args.headline.split(",") if c.strip()] if args.headline else None
            result = build_report(args.grid_dir, out, args.columns, not args.no_plots, args.where, headline)
        except (WhereError, HeadlineError) as err:
            _fail(str(err))
    print(result["table"])
    if earlier is not None:
        keys, rows = read_results(Path(out))
        if sorted(keys) != sorted(earlier[0]):
            _fail(f"--compare: {args.compare} keys its rows by {', '.join(earlier[0])}; this report by {', '.join(keys)}")
        rows = {tuple(r[k] for k in earlier[0]): r for r in rows.values()}  # the axes may come in another order
        lines, result["compare"] = compare_results(earlier[1], rows, args.compare)
        print("\n".join(lines))
        with open(Path(out) / "README.md", "a") as f:
            f.write("\n## Against an earlier report\n\n" + "\n".join(lines) + "\n")
    print(f"{result['finished']}/{result['runs']} runs; wrote {out}")
    if args.readme:
        write_readme_block(Path(args.readme), args.name or result.get("name", ""), result.get("readme_block", ""))
    if args.wandb:
        local = log_wandb(args.grid_dir[0], out, result, args.wandb_project, args.wandb_mode, args.wandb_entity,
                          args.columns)
        print(f"W&B report run ({args.wandb_mode}): {local}")
    return result


def write_readme_block(path: Path, name: str, block: str) -> None:
    """Replaces the text between ``<!-- report:name -->`` and ``<!-- /report:name -->`` in ``path``."""
    start, end = f"<!-- report:{name} -->", f"<!-- /report:{name} -->"
    text = path.read_text() if path.is_file() else ""
    if start not in text or end not in text or text.index(start) > text.index(end):
        print(f"report.py: error: {path} has no block '{start}' ... '{end}'", file=sys.stderr)
        raise SystemExit(2)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{block}{end}{tail}")


if __name__ == "__main__":
    main()
