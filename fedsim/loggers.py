"""Run logging on rank 0: a CSV file that is always written, and Weights & Biases on request.

``RunLogger`` is the one facade the simulation and callbacks use. Every method is a no-op on
ranks other than 0. W&B runs offline unless ``mode: online`` is configured, so nothing waits on a
login; ``round`` is the x-axis of every W&B chart. On resume, ``metrics.csv`` and ``rounds.jsonl`` (one line
per round: cohort, malicious clients, clients the rule accepted) keep the rounds the checkpoint
covers and drop the rest, so a resumed run's files equal an uninterrupted one's.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class LoggerConfig:
    """Where metrics go (``metrics.csv`` in the run directory is always written).

    Args:
        wandb: also log to Weights & Biases.
        project: W&B project.
        entity: W&B entity (team or user); None = your default.
        group: W&B group (experiment grids group their cells here).
        name: W&B run name; None = the run directory's name.
        mode: "offline" (default: sync later with `wandb sync`), "online" or "disabled".
        tags: W&B tags.
    """

    wandb: bool = False
    project: str = "fedsim"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be one of {list(WANDB_MODES)}, got {self.mode!r}")


class RunLogger:
    """Rank-0 facade over metrics.csv and W&B."""

    def __init__(self, config: LoggerConfig, run_dir: Path, is_zero: bool, run_config: dict | None = None) -> None:
        self.config, self.run_dir, self.enabled = config, Path(run_dir), is_zero
        self.rows: list[dict[str, Any]] = []
        self.wandb_run = None
        self.run_config = run_config or {}

    def start(self, resume_round: int = 0, wandb_id: Optional[str] = None) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.csv"
        if resume_round > 0 and path.exists():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r["round"])) < resume_round]
        records = self.run_dir / "rounds.jsonl"
        kept = []
        if resume_round > 0 and records.exists():
            kept = [line for line in records.read_text().splitlines() if json.loads(line)["round"] < resume_round]
        records.write_text("".join(line + "\n" for line in kept))
        if self.config.wandb:
            self._start_wandb(wandb_id)

    def _start_wandb(self, run_id: Optional[str]) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        c = self.config
        self.wandb_run = wandb.init(
            project=c.project, entity=c.entity, group=c.group, name=c.name or self.run_dir.name,
            mode=c.mode, dir=str(self.run_dir), config=self.run_config, tags=c.tags,
            id=run_id, resume="allow" if run_id else None,
        )
        self.wandb_run.define_metric("round")
        self.wandb_run.define_metric("*", step_metric="round")

    @property
    def wandb_id(self) -> Optional[str]:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.rows.append({"round": step, **scalars})
        self._write_csv()
        if self.wandb_run is not None:
            self.wandb_run.log({"round": step, **scalars})

    def log_round_record(self, record: dict[str, Any]) -> None:
        """Appends one JSON line to rounds.jsonl: the round's cohort, attackers, accepted clients."""
        if self.enabled:
            with open(self.run_dir / "rounds.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _write_csv(self) -> None:
        keys: dict[str, None] = {}
        for row in self.rows:
            keys.update(dict.fromkeys(row))
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(keys))
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.run_dir / "metrics.csv")

    def log_histogram(self, key: str, values, step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"round": step, key: wandb.Histogram(values.detach().cpu().numpy())})

    def log_image(self, key: str, path, step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"round": step, key: wandb.Image(str(path))})

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)})

    def set_summary(self, values: dict[str, Any]) -> None:
        """Sets the W&B run summary (what the runs table shows), rank 0 only."""
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
