"""The run folder: checked before any work, locked while a run writes it.

A run never silently writes over another run's results: a ``run_dir`` that already holds them is
refused unless the run resumes (``--resume``) or replaces them (``--overwrite true``), as
LightningCLI refuses to overwrite a saved config. Two runs cannot write one folder at once: the
writer holds ``<run_dir>/.lock`` (its pid; a lock whose process is gone is taken over).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

RESULTS = ("summary.json", "metrics.csv", "rounds.jsonl", "config.yaml", "final_model.pt", "checkpoints")


class RunDirError(ValueError):
    """A run folder that cannot be used; the message says why and what to do."""


def check_run_dir(run_dir: str, resume: Optional[str], overwrite: bool) -> Path:
    """Fails before any work when ``run_dir`` is empty, a file, not writable, or already holds
    another run's results (unless resuming or overwriting). Returns the folder's path."""
    if not str(run_dir).strip():
        raise RunDirError("run_dir must be a folder path, got '' (e.g. --run_dir runs/my_run)")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run_dir {str(path)!r} is a file, not a folder; choose another --run_dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"run_dir {str(path)!r}: {str(existing)!r} is not a writable folder; "
                          f"choose another --run_dir")
    found = [name for name in RESULTS if (path / name).exists()] if path.is_dir() else []
    if found and resume is None and not overwrite:
        raise RunDirError(f"run_dir {str(path)!r} already holds a run ({', '.join(found)}); continue it with "
                          f"--resume auto, replace it with --overwrite true, or choose another --run_dir")
    return path


def clear_results(path: Path) -> None:
    """``--overwrite true``: removes the earlier run's results (not other files in the folder)."""
    for name in RESULTS:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for pattern in ("*_repaired.pt", "*_activations.png", "*_threshold.png", "curves.png"):
        for target in path.glob(pattern):
            target.unlink()


class RunLock:
    """``<run_dir>/.lock`` held by this process while it writes the folder."""

    def __init__(self, path: Path) -> None:
        self.file = Path(path) / ".lock"
        self.held = False

    def acquire(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.file)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise RunDirError(f"run_dir {str(self.file.parent)!r} is in use by process {pid} "
                                      f"({self.file}); wait for it, or use another --run_dir") from None
                self.file.unlink(missing_ok=True)  # a crashed run's lock
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise RunDirError(f"run_dir {str(self.file.parent)!r}: could not take the lock {self.file}")

    def release(self) -> None:
        if self.held:
            self.file.unlink(missing_ok=True)
            self.held = False


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
