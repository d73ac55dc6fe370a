"""Checkpoint state, in one place: its schema, the configuration fingerprint, the checks a
resume must pass, and atomic writing.

- **Schema** (``checkpoint_state``): the global model, theta_0, the previous global model
  (Neurotoxin's mask), the round, aggregator and attack state, the W&B run id, the seed, the
  summed training time, the fingerprint, and a SHA-256 over every value (``with_digest``).
- **Fingerprint** (``trajectory``): the parts of the parsed configuration that determine the
  global model's trajectory (``TRAJECTORY_KEYS`` minus the ``RESUMABLE`` fields: more rounds,
  other evaluation and checkpoint cadence, data location). ``check_fingerprint`` compares it leaf
  by leaf with the one a checkpoint holds.
- **Resume** (``resume_state``): load (``torch.load(weights_only=True)``: pickled code in a
  checkpoint never runs), verify the digest, then refuse another seed, another fingerprint, or
  tensors / a round that do not fit the configured run (``validate_state``).
- **Atomic writes** (``save_atomic``): a temporary file in the same folder, fsync, rename. A crash
  mid-write leaves the previous checkpoint intact, and a temporary file left by a crash is
  removed by the next write; a full disk says so and that the previous file is intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

# Keys of the parsed configuration that determine the training trajectory, and the fields of
# them that may change between a checkpoint and its resume (more rounds, other evaluation and
# checkpoint cadence, the data's location). Post-training callbacks, logging and the hardware
# layout are not part of it (FLAIN on a saved model is a resume with other callbacks).
TRAJECTORY_KEYS = ("seed", "data", "partition", "model", "fed", "client", "aggregator", "attack")
RESUMABLE = {"fed": ("rounds", "eval_every", "checkpoint_every"), "data": ("data_dir", "download")}


DIGEST = "sha256"


def digest(state: Any) -> str:
    """SHA-256 of a checkpoint's values (the ``sha256`` entry itself left out), in key order."""
    import hashlib

    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                if k != DIGEST:
                    h.update(f"K{k!s}".encode())
                    feed(value[k])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}".encode())
            for v in value:
                feed(v)
        else:
            h.update(f"V{value!r}".encode())

    feed(state)
    return h.hexdigest()


def with_digest(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, DIGEST: digest(state)}


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a crash mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (28, 122):  # ENOSPC, EDQUOT
            raise OSError(err.errno, f"disk full while writing {path}; the previous {path.name} is intact "
                                     f"(free space and resume with --resume auto)") from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a simulation checkpoint; a missing or corrupt file raises a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"resume: checkpoint {str(path)!r} is corrupt or not a fedsim checkpoint ({err})") from err
    missing = {"global_params", "theta0", "round"} - set(state) if isinstance(state, dict) else {"everything"}
    if missing:
        raise ValueError(f"resume: checkpoint {str(path)!r} lacks {sorted(missing)}")
    if DIGEST in state and state[DIGEST] != digest(state):  # older checkpoints have no digest
        raise ValueError(f"resume: checkpoint {str(path)!r} fails its integrity check (sha256 mismatch: "
                         f"changed on disk); resume from another checkpoint or start a new run_dir")
    return state


def validate_state(state: dict[str, Any], path: str, numel: int, dtype: torch.dtype, rounds: int) -> None:
    """Refuses a checkpoint that does not fit the configured run: every parameter vector
    (theta0, global, previous global) ``[numel]`` of ``dtype`` with finite values, and the round
    an integer in [0, rounds]."""
    for key in ("theta0", "global_params", "prev_global"):
        t = state.get(key)
        if t is None and key == "prev_global":
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (numel,) or t.dtype != dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"resume: checkpoint {path!r}: {key} must be a [{numel}] {dtype} vector for the "
                             f"configured model, got {got}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"resume: checkpoint {path!r}: {key} holds NaN or Inf values; refusing to resume")
    r = state["round"]
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= rounds:
        raise ValueError(f"resume: checkpoint {path!r}: round must be an integer in [0, fed.rounds={rounds}], "
                         f"got {r!r}")


# ----------------------------------------------------------------------------- schema


def checkpoint_state(*, global_params: torch.Tensor, theta0: torch.Tensor, prev_global: Optional[torch.Tensor],
                     round: int, aggregator: dict, attack: dict, wandb_id: Optional[str], seed: int,
                     train_seconds: float, fingerprint: Optional[dict]) -> dict[str, Any]:
    """The checkpoint's content (tensors moved to the CPU), with its digest."""
    state = {"global_params": global_params.cpu(), "theta0": theta0.cpu(),
             "prev_global": prev_global.cpu() if prev_global is not None else None, "round": round,
             "aggregator": aggregator, "attack": attack, "wandb_id": wandb_id, "seed": seed,
             "train_seconds": train_seconds, "fingerprint": fingerprint}
    return with_digest(state)


def resume_state(path: str, *, seed: int, fingerprint: Optional[dict], numel: int, dtype: torch.dtype,
                 rounds: int) -> dict[str, Any]:
    """Loads ``path`` and refuses it (``ValueError``) unless it fits this run: the same seed, the
    same trajectory fingerprint, parameter vectors of the configured shape and a round in
    [0, rounds]."""
    state = load_checkpoint(path)
    if state.get("seed", seed) != seed:
        raise ValueError(f"resume: checkpoint {path!r} was written with seed={state['seed']}, "
                         f"this run has seed={seed}; resume with the same seed")
    check_fingerprint(path, state.get("fingerprint"), fingerprint)
    validate_state(state, path, numel, dtype, rounds)
    return state


# ----------------------------------------------------------------------------- fingerprint


def trajectory(cfg) -> dict:
    """The parts of a parsed config that determine the global model's trajectory, as plain
    values; checkpoints store it and ``--resume`` refuses a different one."""
    import json

    plain = json.loads(json.dumps(cfg.as_dict(), default=str))
    out = {key: plain.get(key) for key in TRAJECTORY_KEYS}
    for key, free in RESUMABLE.items():
        section = out.get(key) if isinstance(out.get(key), dict) else {}
        args = section.get("init_args", section)  # a class's arguments, or a dataclass's fields
        for name in free:
            if isinstance(args, dict):
                args.pop(name, None)
    return out


def check_fingerprint(resume: str, saved: Optional[dict], current: Optional[dict]) -> None:
    """Refuses to continue a checkpoint under a configuration that would change its trajectory.

    Compared leaf by leaf (``client.lr``, ``aggregator.init_args.f``, ...) over the leaves both
    sides have, so an option added to the code later (absent from an older checkpoint) does not
    block resuming it; ``class_path`` values compare by the class they name, however spelled."""
    if saved is None or current is None:
        return  # checkpoints written before fingerprints existed, or runs built without the CLI
    old, new = _leaves(saved), _leaves(current)
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    if changed:
        details = "; ".join(f"{k}: checkpoint {old[k]!r}, now {new[k]!r}" for k in changed)
        raise ValueError(f"resume: checkpoint {resume!r} was written with a different configuration of "
                         f"{', '.join(changed)} ({details[:600]}); resume with the same values or start a "
                         f"new run_dir")


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if prefix.endswith("class_path") and isinstance(tree, str):
        return {prefix: _class_name(tree)}
    return {prefix: tree}


def _class_name(path: str) -> str:
    """``fedsim.aggregators.Krum`` and ``fedsim.aggregators.krum.Krum`` name the same class."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return f"{cls.__module__}.{cls.__qualname__}"
    except (ImportError, AttributeError, ValueError):
        return path
