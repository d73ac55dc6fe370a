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

An axis value may restrict where it appears with two reserved keys: ``only`` (axis -> list of
value names: the value is combined only with those) and ``seeds`` (a subset of the grid's seeds),
e.g. ``krum: {config: configs/paper/defenses/krum.yaml, only: {mcr: ["0.2", "0.5"]}, seeds: [0, 1]}``.
``order: seeds_first`` runs every cell of the first seed before any of the second (a grid that
spans several sittings then has complete seeds early); the default varies the seed fastest.

Override keys are train.py's dotted options with or without the leading ``--``; ``config`` takes a
path or a list of paths (overlay files). Scalars are passed as text, lists and dicts as JSON.
Argument order of a cell (later wins): ``--config base``, the grid's ``overrides`` config files,
every axis's config files in axis order, the grid's dotted overrides, every axis's dotted
overrides in axis order, then ``--seed``, ``--run_dir``, ``--logger.group``, the W&B name
(``<cell>-seed<k>``), job type (``grid-cell``), tags (``axis=value``) and config entries (the axis
values, seed and grid name, top-level so the W&B runs table groups by them), ``--resume auto``
``--threads 1`` and ``--devices``. So files come first and dotted keys refine them. Every cell
trains with one torch thread per process (``--devices`` = cores // ``--processes`` processes),
so a cell's numbers do not depend on how many cells run at once. ``cells.json`` records the git
commit (and whether the tree was dirty) of the code that ran, per invocation.

A cell's run directory is ``out_dir/<value names joined by "_">/seed<k>``. Cells whose
``summary.json`` exists are skipped; the others run with ``--resume auto`` (an interrupted cell
continues from its checkpoint). ``cells.json`` in ``out_dir`` lists every cell's axis values,
seed, run directory and status, for ``launch/report.py``.

``resume_from: <out_dir of another grid>`` evaluates new post-training defenses on runs that are
already trained: each cell starts from ``checkpoints/last.ckpt`` of that grid's cell with the
same axis values and seed (``--resume <path>`` instead of ``auto``) and, the run being finished,
trains no round and runs only its callbacks into its own run directory. The cell is found in the
source's ``cells.json`` by its values as a mapping, so the axes may come in another order (and the
folder names differ); a source without ``cells.json`` is matched by folder name. The training
configuration must be the source's (a different trajectory is refused by the resume check, naming
the field); add the callbacks with an overlay. A cell whose source has not finished waits (status
``waiting``), so the grid can be rerun while the source grid is still training.

``resume_from`` may also be a list of out_dirs: a cell starts from the first grid that has it, so
one post-training grid can cover runs that different grids trained.

``--where axis=v1,v2`` (or ``axis!=v1,v2``; ``seed`` filters the seeds) runs only the cells that
pass every filter, e.g. one seed or one row of a long grid first; the other cells stay listed in
``cells.json`` as ``pending``. Before it runs (and with ``--dry_run``) it prints a plan: the cells
left, their training rounds and the training time at the median round time of the grid's finished
cells (``plan_text``).

``--archive DIR`` keeps the results of a grid apart from its run directories, small enough to
commit: ``DIR/<name>/<cell>/seed<k>/`` gets each finished cell's ``summary.json``, ``metrics.csv``,
``rounds.jsonl`` and ``config.yaml`` (17-231 KB; no checkpoints, no models) as soon as it finishes,
and ``DIR/<name>/cells.json`` lists every cell of the grid (status ``archived`` or ``pending``) and
the commits of the code that ran them. A cell already in the archive counts as done, so a grid
continues on another machine (or after its run directories were lost) from a checkout that has the
archive, and ``launch/report.py DIR/<name>`` reports it like any grid. ``--archive_only`` copies
the finished cells of ``out_dir`` into the archive and runs nothing. Cells of a ``resume_from``
grid still need their source's checkpoint, which the archive does not hold.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import yaml

TRAIN = Path(__file__).resolve().parent / "train.py"
sys.path.insert(0, str(TRAIN.parent.parent))

from fedsim.runtime.gitstate import git_state  # noqa: E402  (light: no torch)
GRID_KEYS = {"name", "base", "out_dir", "seeds", "axes", "overrides", "order", "resume_from"}
RESERVED = ("only", "seeds")  # keys of an axis value that restrict it instead of overriding
ORDERS = ("seeds_last", "seeds_first")
ARCHIVED = ("summary.json", "metrics.csv", "rounds.jsonl", "config.yaml")  # what --archive keeps of a finished cell


@dataclass(frozen=True)
class Grid:
    """A parsed grid file (see the module docstring)."""

    name: str
    base: str
    out_dir: str
    seeds: list[int]
    axes: dict[str, dict[str, dict[str, Any]]]
    overrides: dict[str, Any]
    order: str = "seeds_last"
    resume_from: Optional[tuple[str, ...]] = None


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its axis values (axis -> value name), seed, directory and arguments."""

    values: dict[str, str]
    seed: int
    run_dir: str
    args: list[str]
    source: Optional[str] = None  # with resume_from: the trained run it starts from


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
    order = raw.get("order", "seeds_last")
    if order not in ORDERS:
        raise ValueError(f"grid.order must be one of {list(ORDERS)}, got {order!r}")
    resume_from = raw.get("resume_from")
    if resume_from is not None:
        sources = resume_from if isinstance(resume_from, list) else [resume_from]
        if not sources or not all(isinstance(s, str) and s for s in sources):
            raise ValueError("grid.resume_from must be the out_dir of a trained grid or a non-empty list of them, "
                             f"got {resume_from!r}")
        resume_from = tuple(sources)
    axes = _check_axes(raw.get("axes") or {})
    _check_restrictions(axes, seeds)
    out_dir = raw.get("out_dir") or f"runs/grids/{raw['name']}"
    for source in resume_from or ():
        if Path(source).resolve() == Path(out_dir).resolve():
            raise ValueError(f"grid.resume_from must differ from grid.out_dir, got {source!r} for both")
    return Grid(raw["name"], raw["base"], out_dir, seeds, axes, overrides, order, resume_from)


def _check_restrictions(axes: dict[str, dict[str, dict[str, Any]]], seeds: list[int]) -> None:
    for axis, values in axes.items():
        for name, ov in values.items():
            only = ov.get("only", {})
            if not isinstance(only, dict) or any(a not in axes or a == axis for a in only):
                raise ValueError(f"grid.axes.{axis}.{name}.only must map other axes ({sorted(set(axes) - {axis})}) "
                                 f"to lists of their value names, got {only!r}")
            for a, allowed in only.items():
                if not isinstance(allowed, list) or any(str(v) not in axes[a] for v in allowed):
                    raise ValueError(f"grid.axes.{axis}.{name}.only.{a} must be a list of {list(axes[a])}, "
                                     f"got {allowed!r}")
            own = ov.get("seeds", seeds)
            if not isinstance(own, list) or not own or any(s not in seeds for s in own):
                raise ValueError(f"grid.axes.{axis}.{name}.seeds must be a non-empty subset of grid.seeds "
                                 f"{seeds}, got {own!r}")


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
        if key in RESERVED:
            continue
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


def cell_args(grid: Grid, values: dict[str, str], seed: int, run_dir: str, source: Optional[Path] = None) -> list[str]:
    """train.py arguments of one cell, in the documented order (later wins); with ``resume_from``
    the cell resumes from ``source`` (default: ``source_dir``)."""
    configs, dotted = _split(grid.overrides)
    configs.insert(0, grid.base)
    for axis, name in values.items():
        c, d = _split(grid.axes[axis][name])
        configs += c
        dotted += d
    args = [a for path in configs for a in ("--config", path)]
    # W&B: the cell's name, tags and top-level config entries come from its axis values
    wandb = ["--logger.name", f"{cell_name(values)}-seed{seed}", "--logger.job_type", "grid-cell",
             "--logger.tags", json.dumps([f"{a}={v}" for a, v in values.items()]),
             "--logger.config", json.dumps({**values, "seed": seed, "grid": grid.name})]
    resume = "auto" if grid.resume_from is None else \
        str((source or source_dir(grid, values, seed)) / "checkpoints" / "last.ckpt")
    return args + dotted + ["--seed", str(seed), "--run_dir", run_dir,
                            "--logger.group", grid.name, *wandb, "--resume", resume]


def source_dir(grid: Grid, values: dict[str, str], seed: int) -> Path:
    """With ``resume_from``: the trained cell with the same axis values and seed in the first
    source grid that lists it in its ``cells.json`` (or, without one, has its folder name); a
    cell no source has yet is looked for under the first source's folder name (it waits)."""
    key = _cell_key(values, seed)
    for source in grid.resume_from:
        cells = _source_cells(source)
        if cells is None:
            path = Path(source) / cell_name(values) / f"seed{seed}"
            if path.is_dir():
                return path
        elif key in cells:
            return Path(source) / cells[key]
    return Path(grid.resume_from[0]) / cell_name(values) / f"seed{seed}"


def _cell_key(values: dict[str, Any], seed: int) -> tuple:
    """A cell's identity across grids: its axis values in any axis order, and its seed."""
    return tuple(sorted((str(a), str(v)) for a, v in values.items())), int(seed)


def _source_cells(source: str) -> Optional[dict[tuple, Path]]:
    """Cell key -> "<folder>/seed<k>" of the cells a source grid's ``cells.json`` lists (None without one)."""
    path = Path(source) / "cells.json"
    return _read_cells(str(path), path.stat().st_mtime_ns) if path.is_file() else None


@functools.lru_cache(maxsize=16)
def _read_cells(path: str, mtime_ns: int) -> dict[tuple, Path]:
    """Parsed once per version of the file (``mtime_ns``), not once per cell of the grid."""
    cells = json.loads(Path(path).read_text()).get("cells", [])
    return {_cell_key(c["values"], c["seed"]): Path(Path(c["run_dir"]).parent.name) / Path(c["run_dir"]).name
            for c in cells}


def _allowed(grid: Grid, values: dict[str, str], seed: int) -> bool:
    """Whether every value's ``only`` / ``seeds`` restriction admits this combination."""
    for axis, name in values.items():
        ov = grid.axes[axis][name]
        if seed not in ov.get("seeds", grid.seeds):
            return False
        if any(str(values[a]) not in [str(v) for v in allowed] for a, allowed in ov.get("only", {}).items()):
            return False
    return True


class WhereError(ValueError):
    """A ``--where`` filter that does not parse or names no axis."""


def parse_where(text: str, axes: dict[str, list[str]]) -> tuple[str, bool, list[str]]:
    """``axis=v1,v2`` (keep those values) or ``axis!=v1,v2`` (drop them) -> (axis, keep, values);
    ``WhereError`` naming the axes when it does not parse or names no axis. ``axes`` may hold
    ``seed`` (its values the seeds as text): grids reserve that name for the seeds."""
    keep = "!=" not in text
    axis, sep, values = text.partition("=" if keep else "!=")
    axis = axis.strip()
    if not sep or not axis or not values.strip():
        raise WhereError(f"--where must read axis=v1,v2 or axis!=v1,v2 (axes: {', '.join(axes)}), got {text!r}")
    if axis not in axes:
        raise WhereError(f"--where {text!r}: no axis {axis!r}; the grids' axes are {', '.join(axes)}")
    return axis, keep, [v.strip() for v in values.split(",") if v.strip()]


def passes(values: dict[str, Any], seed: int, filters: list[tuple[str, bool, list[str]]]) -> bool:
    """Whether a cell (axis values, seed) passes every parsed ``--where`` filter."""
    return all((str(seed if axis == "seed" else values.get(axis)) in names) == keep
               for axis, keep, names in filters)


def select_cells(grid: Grid, cells: list[Cell], where: list[str]) -> list[Cell]:
    """The cells that pass every ``--where`` filter; ``WhereError`` before anything runs."""
    axes = {**{a: list(v) for a, v in grid.axes.items()}, "seed": [str(s) for s in grid.seeds]}
    filters = [parse_where(text, axes) for text in where]
    for axis, _, names in filters:
        unknown = [n for n in names if n not in axes[axis]]
        if unknown:
            raise WhereError(f"--where: {axis} has no value {', '.join(unknown)}; its values are "
                             f"{', '.join(axes[axis])}")
    return [c for c in cells if passes(c.values, c.seed, filters)]


def expand(grid: Grid) -> list[Cell]:
    """The cartesian product of the axes (first axis slowest) times the seeds (fastest, or
    slowest with ``order: seeds_first``), minus what the values' restrictions exclude."""
    cells = []
    names = list(grid.axes)
    combos = [dict(zip(names, c)) for c in itertools.product(*(list(grid.axes[a]) for a in names))]
    pairs = ([(v, s) for s in grid.seeds for v in combos] if grid.order == "seeds_first"
             else [(v, s) for v in combos for s in grid.seeds])
    for values, seed in pairs:
        if not _allowed(grid, values, seed):
            continue
        run_dir = str(Path(grid.out_dir) / cell_name(values) / f"seed{seed}")
        source = source_dir(grid, values, seed) if grid.resume_from is not None else None
        cells.append(Cell(values, seed, run_dir, cell_args(grid, values, seed, run_dir, source),
                          None if source is None else str(source)))
    dirs = [c.run_dir for c in cells]
    if len(set(dirs)) != len(dirs):
        raise ValueError("grid.axes: two cells map to the same run directory; make value names unique")
    return cells


def is_done(cell: Cell) -> bool:
    return (Path(cell.run_dir) / "summary.json").is_file()


def archived_dir(cell: Cell, archive: Path) -> Path:
    """Where ``--archive`` keeps a cell: ``<archive>/<grid name>/<cell>/seed<k>``."""
    return archive / Path(cell.run_dir).parent.name / Path(cell.run_dir).name


def is_archived(cell: Cell, archive: Optional[Path]) -> bool:
    return archive is not None and (archived_dir(cell, archive) / "summary.json").is_file()


def archive_cell(cell: Cell, archive: Path) -> bool:
    """Copies a finished cell's ``ARCHIVED`` files (summary.json last: it marks the copy complete);
    False when the cell has not finished."""
    if not is_done(cell):
        return False
    dest = archived_dir(cell, archive)
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(ARCHIVED, key=lambda n: n == "summary.json"):
        if (Path(cell.run_dir) / name).is_file():
            tmp = dest / f".{name}.tmp"
            shutil.copyfile(Path(cell.run_dir) / name, tmp)
            tmp.replace(dest / name)
    return True


def write_archive(grid: Grid, cells: list[Cell], archive: Path) -> None:
    """The archive's cells.json: every cell of the grid with its archived run directory and status
    ``archived`` or ``pending``, and the commits of the code that ran them: the archive's and those
    of the out_dir's ``cells.json`` (not the commit of an ``--archive_only`` invocation)."""
    commits = json.loads((archive / "cells.json").read_text()).get("commits", []) \
        if (archive / "cells.json").is_file() else []
    source = Path(grid.out_dir) / "cells.json"
    for commit in (json.loads(source.read_text()).get("commits", []) if source.is_file() else []):
        if commit not in commits:
            commits.append(commit)
    # run directories relative to the archive (report.py finds them under it on any machine)
    entries = [replace(c, run_dir=str(archived_dir(c, Path()))) for c in cells]
    doc = {"name": grid.name, "axes": {a: list(v) for a, v in grid.axes.items()}, "seeds": grid.seeds,
           "commits": commits,
           "cells": [{**asdict(e), "status": "archived" if is_archived(c, archive) else "pending"}
                     for c, e in zip(cells, entries)]}
    archive.mkdir(parents=True, exist_ok=True)
    tmp = archive / "cells.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(archive / "cells.json")


def is_ready(cell: Cell) -> bool:
    """A cell of a ``resume_from`` grid waits until its source run has finished."""
    return cell.source is None or (Path(cell.source) / "summary.json").is_file()


def run_cell(cell: Cell, devices: int, python: str = sys.executable) -> tuple[str, float]:
    """Runs one cell as a subprocess (isolated) with ``devices`` single-threaded processes;
    output goes to <run_dir>/train.log. Returns (status, seconds), status "ok" or
    "failed (exit N): <last line>"."""
    Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
    log = Path(cell.run_dir) / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run([python, str(TRAIN), *cell.args, "--threads", "1", "--devices", str(devices)],
                            stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    if rc == 0 and is_done(cell):
        return "ok", seconds
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f"failed (exit {rc}): {lines[-1] if lines else 'no output'}", seconds


def _rounds(cell: Cell) -> Optional[int]:
    """The rounds a cell trains: its last ``--fed.rounds`` argument (None when the grid sets none)."""
    values = [cell.args[i + 1] for i, a in enumerate(cell.args[:-1]) if a == "--fed.rounds"]
    return int(values[-1]) if values else None


def _round_seconds(run_dir: Path) -> list[float]:
    """The ``round_seconds`` of every trained round in a run's metrics.csv (none if it has no file)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    seconds = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row.get("round_seconds") or "")
            except ValueError:  # no time in this row, or a cut-off line
                continue
            if not math.isnan(value):
                seconds.append(value)
    return seconds


def plan_text(grid: Grid, cells: list[Cell], todo: list[Cell], store: Optional[Path], processes: int,
              waiting: int = 0) -> str:
    """One line: the cells left to run, their training rounds and the training time they take at
    the median round time (the upper one for an even count) of this grid's finished cells (run
    directories and archive), ``processes`` cells at a time. Evaluation and post-training callbacks come on top."""
    if not todo:
        return f"plan: no cell ready to run; {waiting} wait for their source" if waiting else "plan: no cell left to run"
    if grid.resume_from is not None:
        return f"plan: {len(todo)} cells to run; they train no round (post-training callbacks only)"
    rounds = [_rounds(c) for c in todo]
    if None in rounds:
        return f"plan: {len(todo)} cells to run (their rounds come from the config files: not estimated)"
    finished = [Path(c.run_dir) if is_done(c) else archived_dir(c, store)
                for c in cells if is_done(c) or is_archived(c, store)]
    seconds = [s for run in finished for s in _round_seconds(run)]
    head = f"plan: {len(todo)} cells to run, {sum(rounds):,} training rounds"
    if not seconds:
        return head + "; no finished cell of this grid to time them by"
    median = sorted(seconds)[len(seconds) // 2]
    hours = sum(rounds) * median / max(1, processes) / 3600
    return (f"{head}; the {len(finished)} finished cells of this grid took a median {median:.1f} s a round, so "
            f"about {hours:.1f} h of training with --processes {processes} on a machine as fast "
            f"(evaluation and post-training callbacks on top)")


def git_commit() -> str:
    """``<commit>`` of the code that runs, ``+dirty`` if the tracked files differ from it."""
    state = git_state(TRAIN.parent.parent)
    return (state["commit"] or "unknown") + ("+dirty" if state["dirty"] else "")


def write_cells(grid: Grid, cells: list[Cell], status: dict[str, str], path: Path) -> None:
    """cells.json: the grid's name, axes (value names in order), one entry per cell, and the
    commits of the code that ran it (one per invocation of the grid runner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    commits = json.loads(path.read_text()).get("commits", []) if path.is_file() else []
    commit = git_commit()
    if not commits or commits[-1] != commit:
        commits.append(commit)
    doc = {"name": grid.name, "axes": {a: list(v) for a, v in grid.axes.items()}, "seeds": grid.seeds,
           "commits": commits,
           "cells": [{**asdict(c), "status": status.get(c.run_dir, "pending")} for c in cells]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def run_grid(grid: Grid, processes: int = 1, dry_run: bool = False, python: str = sys.executable,
             where: Optional[list[str]] = None, archive: Optional[str] = None,
             archive_only: bool = False) -> dict[str, int]:
    """Runs every unfinished cell that passes ``where``, ``processes`` at a time; returns counts
    ran/skipped/failed (and waiting, pending: cells left out by ``where``). With ``archive`` a cell
    in the archive counts as done and each finished cell is copied there (module docstring)."""
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    cells = expand(grid)
    chosen = select_cells(grid, cells, where or [])
    store = Path(archive) / grid.name if archive else None
    if store is not None and not dry_run:
        copied = sum(archive_cell(c, store) for c in cells if not is_archived(c, store) or archive_only)
        write_archive(grid, cells, store)
        if archive_only:
            return {"archived": copied, "in archive": sum(is_archived(c, store) for c in cells),
                    "cells": len(cells)}
    status = {c.run_dir: "skipped (summary.json exists)" for c in cells if is_done(c)}
    status.update({c.run_dir: "skipped (archived)" for c in cells if c.run_dir not in status and is_archived(c, store)})
    left_out = {c.run_dir for c in cells} - {c.run_dir for c in chosen} - set(status)
    waiting = [c for c in chosen if c.run_dir not in status and not is_ready(c)]
    status.update({c.run_dir: f"waiting (its source {c.source} has not finished)" for c in waiting})
    todo = [c for c in chosen if c.run_dir not in status]
    skipped = len(cells) - len(todo) - len(waiting) - len(left_out)
    plan = plan_text(grid, cells, todo, store, processes, len(waiting))
    if dry_run:
        for c in chosen:
            state = "run " if c.run_dir not in status else ("wait" if c in waiting else "skip")
            print(state, " ".join(["python", "launch/train.py", *c.args]))
        print(plan)
        return {"ran": 0, "skipped": skipped, "failed": 0,
                "pending": len(todo) + len(left_out), "waiting": len(waiting)}
    print(plan, flush=True)
    cells_json = Path(grid.out_dir) / "cells.json"
    write_cells(grid, cells, status, cells_json)
    cores = int(os.environ.get("FEDSIM_CPU_PROCESSES") or os.cpu_count() or 1)  # as train.py's devices: auto
    devices = max(1, cores // processes)

    def finished(cell: Cell) -> None:  # each cell is archived as soon as it has finished
        if store is not None and archive_cell(cell, store):
            write_archive(grid, cells, store)

    failed = _run_all(todo, processes, devices, python, status, finished)
    write_cells(grid, cells, status, cells_json)
    counts = {"ran": len(todo) - failed, "skipped": skipped, "failed": failed}
    if waiting:
        counts["waiting"] = len(waiting)
    if left_out:
        counts["pending"] = len(left_out)
    return counts


def _run_all(todo: list[Cell], processes: int, devices: int, python: str, status: dict[str, str],
             finished=lambda cell: None) -> int:
    from tqdm.auto import tqdm

    failed = 0
    with ThreadPoolExecutor(processes) as pool, tqdm(total=len(todo), desc="cells", dynamic_ncols=True) as bar:
        futures = {pool.submit(run_cell, c, devices, python): c for c in todo}
        for future in as_completed(futures):
            cell = futures[future]
            state, seconds = future.result()
            status[cell.run_dir] = state if state != "ok" else f"ok ({seconds:.0f} s)"
            if state == "ok":
                finished(cell)
            else:
                failed += 1
                tqdm.write(f"FAILED {cell.run_dir}: {state} (log: {cell.run_dir}/train.log)")
            bar.set_postfix(failed=failed)
            bar.update(1)
    return failed


def main(argv: Optional[list[str]] = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help="grid YAML file (format in this module's docstring)")
    parser.add_argument("--processes", type=int, default=1, help="cells run at once (each with cores // N single-threaded processes)")
    parser.add_argument("--dry_run", action="store_true", help="print the cells' commands and exit")
    parser.add_argument("--wandb", action="store_true",
                        help="every cell also logs to W&B (--logger.wandb true), grouped under the grid's name")
    parser.add_argument("--where", action="append", default=[], metavar="AXIS=V1,V2",
                        help="run only the cells with these values of an axis (AXIS!=V1,V2: without them; "
                             "seed=0,1 filters the seeds); repeatable")
    parser.add_argument("--archive", default=None, metavar="DIR",
                        help="copy each finished cell's summary.json, metrics.csv, rounds.jsonl and config.yaml to "
                             "DIR/<grid name>/ (a grid report.py reads); cells found there count as done")
    parser.add_argument("--archive_only", action="store_true",
                        help="with --archive: copy the finished cells into the archive and run nothing")
    args = parser.parse_args(argv)
    if args.archive_only and not args.archive:
        parser.error("--archive_only needs --archive DIR")
    grid = load_grid(args.grid)
    if args.wandb:
        grid = replace(grid, overrides={**grid.overrides, "logger.wandb": True})
    try:
        counts = run_grid(grid, args.processes, args.dry_run, where=args.where, archive=args.archive,
                          archive_only=args.archive_only)
    except WhereError as err:  # one line, no usage, no traceback (as report.py's errors)
        print(f"experiments.py: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
