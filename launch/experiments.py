"""Runs a grid of experiments from one YAML file; every cell is an ordinary training run.

    python launch/experiments.py --grid configs/grids/smoke.yaml [--processes N] [--dry_run]

Built for the evaluation of FLAIN (Ding, Yang, Huang, arXiv 2408.08655, ICMR 2025): attacks x
data splits x malicious client ratios x defenses x seeds. Grid file format::

    name: paper_mnist_reduced            # W&B group (--logger.group) and default out_dir name
    base: configs/paper/mnist.yaml       # a train config (path relative to where you run)
    out_dir: runs/grids/paper_mnist_reduced
    seeds: [0, 1]
    overrides: {fed.rounds: 20}          # optional: dotted keys applied to every cell
    axes:                                # axis name -> {value name -> overrides of that value}
      attack:
        badnets: {config: configs/paper/attacks/badnets.yaml}
        dba: {config: configs/paper/attacks/dba.yaml}
      mcr:
        "0.1": {attack.schedule.mcr: 0.1}
        "0.2": {attack.schedule.mcr: 0.2}

Override keys are train.py's dotted options with or without the leading ``--``; ``config`` takes a
path or a list of paths (overlay files). Scalars are passed as text, lists and dicts as JSON.
Argument order of a cell (later wins): ``--config base``, the grid's ``overrides`` config files,
every axis's config files in axis order, the grid's dotted overrides, every axis's dotted
overrides in axis order, then ``--seed``, ``--run_dir``, ``--logger.group``, ``--resume auto``
and ``--threads``. So files come first and dotted keys refine them.

A cell's run directory is ``out_dir/<value names joined by "_">/seed<k>``. Cells whose
``summary.json`` exists are skipped; the others run with ``--resume auto`` (an interrupted cell
continues from its checkpoint). ``cells.json`` in ``out_dir`` lists every cell's axis values,
seed, run directory and status, for ``launch/report.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import yaml

TRAIN = Path(__file__).resolve().parent / "train.py"
GRID_KEYS = {"name", "base", "out_dir", "seeds", "axes", "overrides"}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file (see the module docstring)."""

    name: str
    base: str
    out_dir: str
    seeds: list[int]
    axes: dict[str, dict[str, dict[str, Any]]]
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its axis values (axis -> value name), seed, directory and arguments."""

    values: dict[str, str]
    seed: int
    run_dir: str
    args: list[str]


def load_grid(path: str) -> Grid:
    """Reads and validates a grid file; raises ValueError naming the bad field."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"grid {path}: expected a mapping with keys {sorted(GRID_KEYS)}")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise ValueError(f"grid {path}: unknown keys {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    for key in ("name", "base"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"grid.{key} must be a non-empty string, got {raw.get(key)!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"grid.seeds must be a non-empty list of integers, got {seeds!r}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"grid.overrides must be a mapping of dotted keys to values, got {overrides!r}")
    return Grid(raw["name"], raw["base"], raw.get("out_dir") or f"runs/grids/{raw['name']}", seeds,
                _check_axes(raw.get("axes") or {}), overrides)


def _check_axes(axes: Any) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(axes, dict):
        raise ValueError(f"grid.axes must map axis names to {{value name: overrides}}, got {axes!r}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, values in axes.items():
        if axis == "seed":
            raise ValueError("grid.axes: 'seed' is reserved; list seeds under grid.seeds")
        if not isinstance(values, dict) or not values:
            raise ValueError(f"grid.axes.{axis} must be a non-empty mapping of value names to overrides")
        out[str(axis)] = {}
        for name, ov in values.items():
            if ov is not None and not isinstance(ov, dict):
                raise ValueError(f"grid.axes.{axis}.{name} must be a mapping of overrides, got {ov!r}")
            out[str(axis)][str(name)] = ov or {}
    return out


def _split(overrides: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(config files, dotted arguments) of one overrides mapping."""
    configs: list[str] = []
    dotted: list[str] = []
    for key, value in overrides.items():
        key = str(key).lstrip("-")
        if key == "config":
            configs += [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            dotted += [f"--{key}", _text(value)]
    return configs, dotted


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def cell_name(values: dict[str, str]) -> str:
    """The folder name of a cell: value names joined by "_", unsafe characters replaced."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+=-]", "-", v) for v in values.values()) or "base"


def cell_args(grid: Grid, values: dict[str, str], seed: int, run_dir: str) -> list[str]:
    """train.py arguments of one cell, in the documented order (later wins)."""
    configs, dotted = _split(grid.overrides)
    configs.insert(0, grid.base)
    for axis, name in values.items():
        c, d = _split(grid.axes[axis][name])
        configs += c
        dotted += d
    args = [a for path in configs for a in ("--config", path)]
    return args + dotted + ["--seed", str(seed), "--run_dir", run_dir,
                            "--logger.group", grid.name, "--resume", "auto"]


def expand(grid: Grid) -> list[Cell]:
    """The cartesian product of the axes (first axis slowest) times the seeds (fastest)."""
    cells = []
    names = list(grid.axes)
    for combo in itertools.product(*(list(grid.axes[a]) for a in names)):
        values = dict(zip(names, combo))
        for seed in grid.seeds:
            run_dir = str(Path(grid.out_dir) / cell_name(values) / f"seed{seed}")
            cells.append(Cell(values, seed, run_dir, cell_args(grid, values, seed, run_dir)))
    dirs = [c.run_dir for c in cells]
    if len(set(dirs)) != len(dirs):
        raise ValueError("grid.axes: two cells map to the same run directory; make value names unique")
    return cells


def is_done(cell: Cell) -> bool:
    return (Path(cell.run_dir) / "summary.json").is_file()


def run_cell(cell: Cell, threads: int, python: str = sys.executable) -> tuple[str, float]:
    """Runs one cell as a subprocess (isolated); output goes to <run_dir>/train.log.
    Returns (status, seconds), status "ok" or "failed (exit N): <last line>"."""
    Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
    log = Path(cell.run_dir) / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run([python, str(TRAIN), *cell.args, "--threads", str(threads)],
                            stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    if rc == 0 and is_done(cell):
        return "ok", seconds
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f"failed (exit {rc}): {lines[-1] if lines else 'no output'}", seconds


def write_cells(grid: Grid, cells: list[Cell], status: dict[str, str], path: Path) -> None:
    """cells.json: the grid's name, axes (value names in order) and one entry per cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": grid.name, "axes": {a: list(v) for a, v in grid.axes.items()}, "seeds": grid.seeds,
           "cells": [{**asdict(c), "status": status.get(c.run_dir, "pending")} for c in cells]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def run_grid(grid: Grid, processes: int = 1, dry_run: bool = False, python: str = sys.executable) -> dict[str, int]:
    """Runs every unfinished cell, ``processes`` at a time; returns counts ran/skipped/failed."""
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    cells = expand(grid)
    todo = [c for c in cells if not is_done(c)]
    status = {c.run_dir: "skipped (summary.json exists)" for c in cells if is_done(c)}
    if dry_run:
        for c in cells:
            state = "skip" if c.run_dir in status else "run "
            print(state, " ".join(["python", "launch/train.py", *c.args]))
        return {"ran": 0, "skipped": len(cells) - len(todo), "failed": 0, "pending": len(todo)}
    cells_json = Path(grid.out_dir) / "cells.json"
    write_cells(grid, cells, status, cells_json)
    threads = max(1, (os.cpu_count() or 1) // processes)
    failed = _run_all(todo, processes, threads, python, status)
    write_cells(grid, cells, status, cells_json)
    return {"ran": len(todo) - failed, "skipped": len(cells) - len(todo), "failed": failed}


def _run_all(todo: list[Cell], processes: int, threads: int, python: str, status: dict[str, str]) -> int:
    from tqdm.auto import tqdm

    failed = 0
    with ThreadPoolExecutor(processes) as pool, tqdm(total=len(todo), desc="cells", dynamic_ncols=True) as bar:
        futures = {pool.submit(run_cell, c, threads, python): c for c in todo}
        for future in as_completed(futures):
            cell = futures[future]
            state, seconds = future.result()
            status[cell.run_dir] = state if state != "ok" else f"ok ({seconds:.0f} s)"
            if state != "ok":
                failed += 1
                tqdm.write(f"FAILED {cell.run_dir}: {state} (log: {cell.run_dir}/train.log)")
            bar.set_postfix(failed=failed)
            bar.update(1)
    return failed


def main(argv: Optional[list[str]] = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help="grid YAML file (format in this module's docstring)")
    parser.add_argument("--processes", type=int, default=1, help="cells run at once (threads each: cores // N)")
    parser.add_argument("--dry_run", action="store_true", help="print the cells' commands and exit")
    parser.add_argument("--wandb", action="store_true",
                        help="every cell also logs to W&B (--logger.wandb true), grouped under the grid's name")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    if args.wandb:
        grid = replace(grid, overrides={**grid.overrides, "logger.wandb": True})
    counts = run_grid(grid, args.processes, args.dry_run)
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
