"""The command line: a jsonargparse parser whose schema is the typed signature of ``run``.

    python launch/train.py --config configs/quickstart.yaml            # 1 process, calls launch()
    fabric run --accelerator cpu --devices 2 launch/train.py --config X # N processes from the CLI
    python launch/train.py --config X --fed.rounds 5 --print_config    # dotted overrides

Components are chosen by ``class_path`` (data, partition, model, aggregator, attack, callbacks).
Classes are instantiated only after the global RNG is seeded from ``seed``, so the initial model
is the same on every rank and in every run with that seed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, lazy_instance
from torch import nn

from fedsim.aggregators import Aggregator, FedAvg
from fedsim.attacks import Attack
from fedsim.callbacks import Callback
from fedsim.clients import ClientConfig
from fedsim.data import Dataset, EmbeddedMNIST, IID, Partitioner, build_federated
from fedsim.loggers import LoggerConfig, RunLogger, utc_now
from fedsim.models import MnistCNN, Model
from fedsim.posttrain import SetupContext, validate_defenses
from fedsim.runtime import dist
from fedsim.runtime.checkpoint import TRAJECTORY_KEYS, trajectory  # noqa: F401  (trajectory: re-exported)
from fedsim.runtime.gitstate import git_state
from fedsim.runtime.rundir import RunDirError, RunLock, check_run_dir, clear_results
from fedsim.runtime.seeding import derive_seed
from fedsim.schema import PositiveFloat, PositiveInt
from fedsim.simulation import FedConfig, Simulation, SimulationConfig


def run(
    data: Dataset = lazy_instance(EmbeddedMNIST),
    partition: Partitioner = lazy_instance(IID),
    model: Model = lazy_instance(MnistCNN),
    fed: FedConfig = FedConfig(),
    client: ClientConfig = ClientConfig(),
    aggregator: Aggregator = lazy_instance(FedAvg),
    attack: Optional[Attack] = None,
    callbacks: Optional[list[Callback]] = None,
    logger: LoggerConfig = LoggerConfig(),
    seed: int = 0,
    run_dir: str = "runs/default",
    resume: Optional[str] = None,
    overwrite: bool = False,
    threads: PositiveInt = 1,
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto",
    devices: Union[int, str] = "auto",
    strategy: str = "auto",
    num_nodes: PositiveInt = 1,
    rank_timeout: PositiveFloat = 300.0,
) -> None:
    """Federated training with attacks, robust aggregation and post-training defenses.

    Args:
        data: the dataset (class_path: fedsim.data.EmbeddedMNIST, MNIST, FashionMNIST, EMNIST, CIFAR10).
        partition: how the training pool is split over clients (fedsim.data.IID, Dirichlet, Shards).
        model: the network (fedsim.models.MnistCNN, FmnistCNN, CifarCNN, ResNet18, TinyNet, LogReg;
            your own: a subclass of fedsim.models.Model).
        fed: the federation: clients, rounds, cohort size, evaluation and checkpoint cadence.
        client: local training of every client.
        aggregator: the server's rule (fedsim.aggregators.FedAvg, Krum, Median, ...).
        attack: the backdoor attack (fedsim.attacks.Attack with data / model parts and a schedule).
        callbacks: run on every rank; post-training defenses such as flain.FLAIN go here.
        logger: metrics.csv is always written; W&B on request (offline by default).
        seed: the root of all randomness: (seed, round, client_id) determines everything.
        run_dir: where config.yaml, metrics.csv, summary.json and checkpoints go.
        resume: a checkpoint to continue from, or "auto" for <run_dir>/checkpoints/last.ckpt.
            A checkpoint of a finished run with fed.rounds unchanged runs no round: only the
            post-training callbacks (e.g. FLAIN on a saved model, without retraining).
        overwrite: replace the results of an earlier run in run_dir (without it, or --resume, a
            run_dir that already holds a run is refused).
        threads: torch threads per process (default 1). One thread per process makes every
            number independent of the process count (more threads change float rounding in the
            kernels); on CPU use more processes instead (``devices``).
        accelerator: used only when not started by `fabric run` (cpu, cuda, auto).
        devices: processes (or GPUs), used only when not started by `fabric run`. "auto" = on
            CPU one process per core (capped at the cohort size; the environment variable
            FEDSIM_CPU_PROCESSES overrides the core count), on a GPU 1.
        strategy: used only when not started by `fabric run`.
        num_nodes: used only when not started by `fabric run`.
        rank_timeout: seconds a rank waits for the others in a collective; when a rank stops
            responding for that long, every rank still running exits with an error naming the
            round (instead of gloo's default 30 minutes).
    """


def build_parser() -> ArgumentParser:
    import fedsim.repair  # noqa: F401  (registers the post-training defenses, so short names resolve:
    import flain  # noqa: F401           --callbacks.help FLAIN, --callbacks FinePruning)

    parser = ArgumentParser(prog="launch/train.py", description=run.__doc__.split("\n")[0], exit_on_error=False,
                            allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file")
    parser.add_function_arguments(run, as_group=False)
    return parser


def main(args: Optional[list[str]] = None) -> dict:
    """Parses ``args`` (default: sys.argv), validates everything, then trains. Returns the summary."""
    return execute(*prepare(args))


def prepare(args: Optional[list[str]] = None):
    """Parses and instantiates the configuration; raises on bad input before any training."""
    from jsonargparse import ArgumentError

    from fedsim.errors import ConfigError, concise

    parser = build_parser()
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as err:  # the schema refused a value: its short message, still an ArgumentError
        raise ConfigError(concise(str(err))) from None
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # model init: same on every rank
    return parser, cfg, parser.instantiate_classes(cfg)


def execute(parser: ArgumentParser, cfg, init) -> dict:
    """Builds the federation and the Fabric processes from a prepared config, then runs it."""
    callbacks = init.callbacks or []
    # every post-training defense checks its settings before any process, data or round
    validate_defenses(callbacks, SetupContext.of(init.model, init.data.num_classes, init.fed.aux_per_class,
                                                 init.fed.rounds, cfg.seed))
    started = utc_now()
    _set_threads(cfg.threads)
    _check_accelerator(cfg.accelerator)
    fabric = _make_fabric(cfg, callbacks, init.fed.cohort_size)
    dist.use_timeout(fabric, cfg.rank_timeout)
    # config.yaml records the layout that ran (also under `fabric run`, which ignores cfg.devices)
    cfg.devices = max(1, fabric.world_size // max(1, getattr(fabric, "num_nodes", 1) or 1))
    run_dir = Path(cfg.run_dir)
    lock = RunLock(run_dir)

    def guard() -> None:  # rank 0, before any work: the folder is usable and ours alone
        check_run_dir(cfg.run_dir, cfg.resume, cfg.overwrite)
        lock.acquire()
        if cfg.overwrite and cfg.resume is None:
            clear_results(run_dir)

    dist.run_on_zero(fabric, guard, None)
    try:
        summary = _execute(parser, cfg, init, fabric, callbacks, run_dir, started)
    finally:
        lock.release()
    _shutdown(fabric)
    return summary


def _execute(parser, cfg, init, fabric, callbacks, run_dir: Path, started: str) -> dict:
    resume = _resolve_resume(cfg.resume, run_dir)
    splits = init.data.load()
    data = build_federated(splits, init.partition, init.fed.num_clients, init.fed.aux_per_class, cfg.seed)
    _check_model(init.model, data)
    prov = provenance(cfg, fabric, started)
    logger = RunLogger(init.logger, run_dir, fabric.is_global_zero, run_config={**cfg.as_dict(), "provenance": prov})
    sim = Simulation(fabric, data, init.model,
                     SimulationConfig(init.fed, init.client, cfg.seed, run_dir, trajectory(cfg)),
                     init.aggregator, init.attack, callbacks, logger)
    sim.setup(resume)  # a refused resume fails here, before config.yaml is (re)written
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(parser.dump(cfg, skip_none=False))
    sim.summary["provenance"] = prov
    summary = sim.run(resume)
    if fabric.is_global_zero:
        from fedsim.terminal import summary_table

        print(summary_table(summary, run_dir), flush=True)
    return summary


def provenance(cfg, fabric, started: str) -> dict:
    """What produced a run: seed, a hash of the resolved config keys that determine its numbers
    (seed, data, partition, model, fed, client, aggregator, attack, callbacks: the same for any
    hardware layout), git commit (and dirty flag), package versions, world size, threads per
    process, accelerator, hardware (``hardware()``: float results differ between CPU kernels, so
    the same config can end elsewhere on another machine), start time (the end time is added when
    the summary is written)."""
    import hashlib
    import json
    import platform

    plain = cfg.as_dict()
    resolved = json.dumps({k: plain.get(k) for k in (*TRAJECTORY_KEYS, "callbacks")}, sort_keys=True, default=str)
    versions = {}
    for name in ("torch", "lightning", "torchvision", "jsonargparse", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # a package absent from this environment
            versions[name] = None
    return {"seed": cfg.seed, "config_sha256": hashlib.sha256(resolved.encode()).hexdigest(),
            "git": git_state(), "versions": {**versions, "python": platform.python_version()},
            "world_size": fabric.world_size, "threads_per_process": torch.get_num_threads(),
            "accelerator": fabric.device.type, "hardware": hardware(fabric.device), "start": started}


def hardware(device) -> dict:
    """The machine that computed a run: architecture, CPU model (``/proc/cpuinfo`` where there is
    one), the CPU kernel level torch dispatches to (``torch.backends.cpu.get_cpu_capability()``,
    e.g. AVX2 or AVX512: different levels round differently) and the GPU's name on CUDA."""
    import platform

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"machine": platform.machine(), "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": gpu}


def _shutdown(fabric) -> None:
    """Every rank waits for the others, then the process group is torn down explicitly: a rank
    that exits while the group is still alive can abort (SIGABRT) in gloo's destructor."""
    import torch.distributed as dist

    if fabric.world_size > 1 and dist.is_available() and dist.is_initialized():
        from fedsim.runtime import dist as collectives

        collectives.set_stage("the end of the run")
        collectives.barrier(fabric)
        collectives.release()
        dist.destroy_process_group()


def _make_fabric(cfg, callbacks: list[Callback], cohort_size: int):
    from lightning.fabric import Fabric

    if os.environ.get("LT_CLI_USED"):  # `fabric run` owns the hardware and started the processes
        return Fabric(callbacks=callbacks)
    devices = resolve_devices(cfg.devices, cfg.accelerator, cohort_size)
    fabric = Fabric(accelerator=cfg.accelerator, devices=devices, strategy=cfg.strategy,
                    num_nodes=cfg.num_nodes, callbacks=callbacks)
    fabric.launch()
    return fabric


def resolve_devices(devices: Union[int, str], accelerator: str, cohort_size: int) -> Union[int, str]:
    """``devices: auto`` on CPU = one single-threaded process per core, at most one per client
    of a round (FEDSIM_CPU_PROCESSES overrides the core count); on an accelerator 1. Other values
    pass through to Fabric."""
    if devices != "auto":
        return devices
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and _has_accelerator()):
        return 1
    cores = os.environ.get("FEDSIM_CPU_PROCESSES") or os.cpu_count() or 1
    try:
        cores = int(cores)
    except ValueError:
        raise ValueError(f"FEDSIM_CPU_PROCESSES must be a positive integer, got {cores!r}") from None
    if cores < 1:
        raise ValueError(f"FEDSIM_CPU_PROCESSES must be a positive integer, got {cores}")
    return max(1, min(cores, cohort_size))


def _check_accelerator(accelerator: str) -> None:
    """An accelerator that this machine lacks fails now, with the ones it has."""
    have = ["cpu"] + (["cuda", "gpu"] if torch.cuda.is_available() else []) + \
        (["mps"] if hasattr(torch.backends, "mps") and torch.backends.mps.is_available() else [])
    if accelerator != "auto" and accelerator not in have:
        raise ValueError(f"accelerator: {accelerator!r} is not available on this machine; available: "
                         f"{['auto', *have]}")


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def _set_threads(threads: int) -> None:
    if threads is None or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads}")
    torch.set_num_threads(threads)


def _resolve_resume(resume: Optional[str], run_dir: Path) -> Optional[str]:
    if resume is None:
        return None
    if resume == "auto":
        path = run_dir / "checkpoints" / "last.ckpt"
        return str(path) if path.exists() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume: checkpoint {resume!r} does not exist (give a path or 'auto')")
    return resume


def _check_model(model: nn.Module, data) -> None:
    """Fails before training when the model does not fit the data's image shape or classes."""
    x = data.test.x[:1]
    try:
        with torch.no_grad():
            out = model.eval()(data.normalize(x))
    except RuntimeError as err:
        raise ValueError(f"model: {type(model).__name__} cannot take inputs of shape {tuple(x.shape[1:])} "
                         f"from data {data.name}: {err}") from err
    model.train()
    if out.shape[-1] != data.num_classes:
        raise ValueError(f"model: {type(model).__name__} outputs {out.shape[-1]} classes, data {data.name} has "
                         f"{data.num_classes}; set model.init_args.num_classes: {data.num_classes}")


def cli() -> None:
    """Console entry point: short errors (at most 3 lines) for bad input instead of tracebacks."""
    from jsonargparse import ArgumentError

    from fedsim.errors import check_config_files, concise

    bad = check_config_files(sys.argv[1:])
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, ArgumentError, RunDirError) as err:
        print(f"error: {concise(str(err))}", file=sys.stderr)
        sys.exit(2)
    except dist.RankTimeout as err:  # a rank stopped responding: say so, and do not wait for gloo's teardown
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    except OSError as err:
        if err.errno not in (28, 122):  # ENOSPC, EDQUOT: said in one line; other faults keep the traceback
            raise
        print(f"error: {err.strerror}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
