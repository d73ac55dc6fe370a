"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A crash mid-write leaves the previous checkpoint intact, and a temporary file left by a crash is
removed by the next write. Checkpoints hold only tensors, numbers, strings and containers of
them, so they load with ``torch.load(weights_only=True)``. ``with_digest`` adds a SHA-256 over
every value (tensors by dtype, shape and bytes), checked by ``load_checkpoint``: a bit flipped
on disk is refused instead of resumed. A full disk while writing says so and that the previous
file is intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
