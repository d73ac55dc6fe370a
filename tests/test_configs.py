"""Every YAML under configs/ is parsed by the real parser and instantiated, component by component,
up to the point where training would start: the run configs and overlays as their header's
command runs them, and every cell of every grid (configs/grids) as launch/experiments.py expands it.

Nothing is trained. The data are a tiny stand-in of the configured dataset's image shape and
classes (the real MNIST, Fashion-MNIST, EMNIST and CIFAR-10 files are not all here); everything
else is the configured component itself: the partition of that stand-in over the configured
clients, the model (checked against the data as before training), the aggregator and attack
connected to the federation, the callbacks validated against the model, the checkpointless
``Simulation.setup`` and the ``on_train_start`` hooks. So a config that would fail before its
first round fails here.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import experiments  # noqa: E402
from fedsim.cli import _check_model, build_parser, trajectory  # noqa: E402
from fedsim.data import EmbeddedMNIST, build_federated  # noqa: E402
from fedsim.posttrain import SetupContext, validate_defenses  # noqa: E402
from fedsim.data.datasets import CIFAR10, EMNIST, DatasetSplits, FashionMNIST, MNIST, Split  # noqa: E402
from fedsim.loggers import LoggerConfig, RunLogger  # noqa: E402
from fedsim.runtime.seeding import derive_seed  # noqa: E402
from fedsim.simulation import Simulation, SimulationConfig  # noqa: E402

CONFIGS = ROOT / "configs"
GRID_FILES = sorted((CONFIGS / "grids").glob("*.yaml"))
TRAIN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "grids" not in p.relative_to(CONFIGS).parts)
SHAPES = {MNIST: (1, 28, 28), FashionMNIST: (1, 28, 28), EMNIST: (1, 28, 28), CIFAR10: (3, 32, 32)}
PER_CLIENT, TEST_PER_CLASS = 20, 4  # stand-in samples per client (beyond the aux set), test samples per class


@functools.lru_cache(maxsize=None)
def _embedded(test_per_class: int, limit_train, limit_test) -> DatasetSplits:
    return EmbeddedMNIST(test_per_class, limit_train, limit_test).load()


@functools.lru_cache(maxsize=8)
def _images(shape: tuple, num_classes: int, n_train: int, n_test: int) -> tuple[Split, Split]:
    gen = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8).float().div_(255)
        return Split(x, torch.arange(n) % num_classes)

    return split(n_train), split(n_test)


def stand_in(data, num_clients: int, aux_per_class: int) -> DatasetSplits:
    """The configured dataset itself when it is the embedded one, else random images of its
    shape and classes: the aux set plus ``PER_CLIENT`` samples per client."""
    if isinstance(data, EmbeddedMNIST):
        return _embedded(data.test_per_class, data.limit_train, data.limit_test)
    shape = SHAPES[type(data)]
    n_train = aux_per_class * data.num_classes + PER_CLIENT * num_clients
    train, test = _images(shape, data.num_classes, n_train, TEST_PER_CLASS * data.num_classes)
    mean, std = (data.mean, data.std) if data.mean else ((0.5,) * shape[0], (0.25,) * shape[0])
    return DatasetSplits(data.name, train, test, data.num_classes, mean, std)


@functools.lru_cache(maxsize=1)
def _parser():
    return build_parser()


def instantiate(args: list[str], run_dir: Path):
    """Parses ``args`` and builds every component as a run does before its first round."""
    from lightning.fabric import Fabric

    parser = _parser()  # fedsim.cli.prepare, with one parser for all configs
    cfg = parser.parse_args(args + ["--run_dir", str(run_dir), "--resume", "null"])
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    init = parser.instantiate_classes(cfg)
    callbacks = init.callbacks or []
    data = build_federated(stand_in(init.data, init.fed.num_clients, init.fed.aux_per_class), init.partition,
                           init.fed.num_clients, init.fed.aux_per_class, cfg.seed)
    _check_model(init.model, data)
    # as fedsim.cli.execute: every post-training defense validated before any data or round
    validate_defenses(callbacks, SetupContext.of(init.model, init.data.num_classes, init.fed.aux_per_class,
                                                 init.fed.rounds, cfg.seed))
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks)
    sim = Simulation(fabric, data, init.model, SimulationConfig(init.fed, init.client, cfg.seed, run_dir, trajectory(cfg)),
                     init.aggregator, init.attack, callbacks, RunLogger(LoggerConfig(), run_dir, True))
    sim.setup(None)
    fabric.call("on_train_start", fabric, sim)
    return cfg, init, sim


def header_command(path: Path) -> list[str]:
    """The arguments of the ``python launch/train.py ...`` (or ``fabric run ... launch/train.py``)
    command in a config's header comment: how the file is meant to run."""
    header = "\n".join(ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#"))
    found = re.search(r"launch/train\.py ((?:--config \S+ ?)+[^\n\[]*)", header)
    assert found, f"{path}: the header says how to run it (python launch/train.py --config ...)"
    return shlex.split(found.group(1))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_is_instantiated_as_its_header_runs_it(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
    assert path.read_text().lstrip().startswith("#"), "every config starts with a header comment"
    args = header_command(path)
    assert str(path.relative_to(ROOT)) in args  # the command runs this very file
    cfg, init, sim = instantiate(args, tmp_path / "run")
    assert sim.fed.cohort_size >= sim.aggregator.min_clients() and cfg.fed.rounds >= 0


BOOKKEEPING = {"--seed", "--run_dir", "--resume", "--logger.group", "--logger.name", "--logger.tags", "--logger.config"}


def distinct_cells(grid: experiments.Grid) -> dict[tuple, experiments.Cell]:
    """The grid's cells, one per distinct configuration: cells that differ only in the seed
    (and so in their run folder and W&B names) share their components' settings."""
    out: dict[tuple, experiments.Cell] = {}
    for cell in experiments.expand(grid):
        a = cell.args
        key = tuple(x for i, x in enumerate(a) if x not in BOOKKEEPING and (i == 0 or a[i - 1] not in BOOKKEEPING))
        out.setdefault(key, cell)
    return out


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.name)
def test_every_cell_of_every_grid_is_instantiated(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # grid paths are relative to the repository root
    grid = experiments.load_grid(str(path))
    every = experiments.expand(grid)
    full = len(grid.seeds) * math.prod(len(v) for v in grid.axes.values())
    restricted = any("only" in ov or "seeds" in ov for v in grid.axes.values() for ov in v.values())
    assert len(every) == full or restricted and 0 < len(every) < full
    cells = distinct_cells(grid)
    for i, (key, cell) in enumerate(cells.items()):
        if key in INSTANTIATED:  # the same configuration in an earlier grid of this session
            continue
        try:
            cfg, _, _ = instantiate(cell.args, tmp_path / f"cell{i}")
        except Exception as err:
            raise AssertionError(f"{path.name}: cell {cell.values}: {err}") from err
        assert cfg.logger.group == grid.name and cfg.seed == cell.seed
        INSTANTIATED.add(key)


INSTANTIATED: set[tuple] = set()  # grid cells instantiated without error in this session


def test_a_config_that_would_fail_before_its_first_round_fails_here(tmp_path, monkeypatch):
    # the checks that run after parsing: cohort vs the rule's minimum, the model vs the data's classes
    monkeypatch.chdir(ROOT)
    base = ["--config", "configs/quickstart.yaml"]
    with pytest.raises(ValueError, match="fed.cohort_size is 10"):
        instantiate(base + ["--aggregator", "fedsim.aggregators.Krum", "--aggregator.f", "4"], tmp_path / "a")
    with pytest.raises(ValueError, match="outputs 7 classes"):
        instantiate(["--config", "configs/paper/cifar10.yaml", "--model.init_args.num_classes", "7"], tmp_path / "b")
    with pytest.raises(ValueError, match="attack.schedule: no active round"):
        instantiate(base + ["--attack.init_args.schedule.init_args.start_round", "20"], tmp_path / "c")
