import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# devices: auto = one process per core; in-process test runs must stay in the pytest process
os.environ["FEDSIM_CPU_PROCESSES"] = "1"
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_args(tmp_path):
    """CLI arguments of the tiny federation, writing into a fresh run directory."""
    return ["--config", str(TINY), "--run_dir", str(tmp_path / "run")]
