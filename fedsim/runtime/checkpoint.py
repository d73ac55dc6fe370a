"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A crash mid-write leaves the previous checkpoint intact. Checkpoints hold only tensors, numbers,
strings and containers of them, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
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
    return state
