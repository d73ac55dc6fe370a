"""Main entry point: federated training, attacks, defenses and FLAIN from one YAML config.

    python launch/train.py --config configs/quickstart.yaml
    fabric run --accelerator cpu --devices 2 launch/train.py --config configs/quickstart.yaml
    python launch/train.py --help
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedsim.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
