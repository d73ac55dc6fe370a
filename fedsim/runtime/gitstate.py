"""The git commit of the code that runs, and whether its tracked files differ from it (for a run's
provenance and a grid's ``cells.json``). Imports nothing heavy, so the grid runner can use it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]


def git_state(root: Path = ROOT) -> dict[str, Optional[object]]:
    """``{"commit": <sha> or None, "dirty": bool or None}`` (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
