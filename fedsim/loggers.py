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
from typing import Any, Literal, Optional, get_args

WandbMode = Literal["offline", "online", "disabled"]
WANDB_MODES = get_args(WandbMode)


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second (provenance start/end)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        job_type: W&B job type ("train" for a run; grids set "grid-cell", reports "report").
        config: extra top-level W&B config entries (grids put their axis values and seed here,
            so the W&B runs table groups by them).
        artifacts: also upload final_model.pt and every <defense>_repaired.pt as a W&B model
            artifact at the end (off by default: a model can be large).
    """

    wandb: bool = False
    project: str = "fedsim"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    mode: WandbMode = "offline"
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: bool = False

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be one of {list(WANDB_MODES)}, got {self.mode!r}")


class RunLogger:
    """Rank-0 facade over metrics.csv and W&B."""

    def __init__(self, config: LoggerConfig, run_dir: Path, is_zero: bool, run_config: dict | None = None) -> None:
        self.config, self.run_dir, self.enabled = config, Path(run_dir), is_zero
        self.rows: list[dict[str, Any]] = []
        self.wandb_run = None
        self.pending: dict[str, Any] = {}  # post-training scalars, logged to W&B in one call
        self.pending_step = 0
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
        self._write_csv()  # the rows the checkpoint covers (none for a new run): the file always exists
        if self.config.wandb:
            self._start_wandb(wandb_id)

    def _start_wandb(self, run_id: Optional[str]) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        c = self.config
        self.wandb_run = wandb.init(
            project=c.project, entity=c.entity, group=c.group, name=c.name or self.run_dir.name,
            mode=c.mode, dir=str(self.run_dir), config={**self.run_config, **c.config}, tags=c.tags,
            job_type=c.job_type, id=run_id, resume="allow" if run_id else None,
        )
        self.wandb_run.define_metric("round")
        self.wandb_run.define_metric("*", step_metric="round")

    @property
    def wandb_id(self) -> Optional[str]:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        scalars = {k: int(v) if isinstance(v, bool) else v for k, v in metrics.items()
                   if isinstance(v, (int, float))}  # booleans as 0/1: no object-typed columns
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

    def log_posttrain(self, name: str, values: dict[str, Any], step: int) -> None:
        """A post-training defense's scalars: one row of ``posttrain.csv`` (not metrics.csv, which
        has exactly one row per round) and, on W&B, ``<name>/<key>`` in one call at the end."""
        if not self.enabled:
            return
        scalars = {k: int(v) if isinstance(v, bool) else v for k, v in values.items() if isinstance(v, (int, float))}
        path = self.run_dir / "posttrain.csv"
        rows = list(csv.DictReader(open(path, newline=""))) if path.exists() else []
        rows = [r for r in rows if r.get("defense") != name] + [{"defense": name, **scalars}]
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        tmp = self.run_dir / ".posttrain.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(keys))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.pending.update({f"{name}/{k}": v for k, v in scalars.items()})
        self.pending_step = step

    def log_histograms(self, entries: dict[str, Any], step: int, bins: int = 64) -> None:
        """Several histograms on the same bins (e.g. clean vs triggered activations), one call."""
        if not (self.enabled and self.wandb_run is not None) or not entries:
            return
        import numpy as np
        import wandb

        arrays = {k: v.detach().cpu().double().numpy() for k, v in entries.items()}
        lo = min(float(a.min()) for a in arrays.values() if a.size)
        hi = max(float(a.max()) for a in arrays.values() if a.size)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        self.wandb_run.log({"round": step, **{k: wandb.Histogram(np_histogram=np.histogram(a, bins=edges))
                                              for k, a in arrays.items()}})

    def log_histogram(self, key: str, values, step: int) -> None:
        self.log_histograms({key: values}, step)

    def log_image(self, key: str, path, step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"round": step, key: wandb.Image(str(path))})

    def log_table(self, key: str, columns: list[str], rows: list[list],
                  line: Optional[tuple[str, str]] = None, title: str = "") -> None:
        """A table; with ``line=(x, y)`` also a ready line chart of y against x (``<key>_chart``)."""
        if self.enabled and self.wandb_run is not None:
            import wandb

            table = wandb.Table(columns=columns, data=rows)
            out = {key: table}
            if line is not None:
                out[f"{key}_chart"] = wandb.plot.line(table, line[0], line[1], title=title or key)
            self.wandb_run.log(out)

    def set_summary(self, values: dict[str, Any]) -> None:
        """Sets the W&B run summary (what the runs table shows), rank 0 only."""
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def finish(self) -> None:
        if self.wandb_run is not None:
            if self.pending:
                self.wandb_run.log({"round": self.pending_step, **self.pending})
                self.pending = {}
            if self.config.artifacts:
                self._log_models()
            self.wandb_run.finish()
            self.wandb_run = None

    def _log_models(self) -> None:
        import wandb

        files = [p for p in [self.run_dir / "final_model.pt", *sorted(self.run_dir.glob("*_repaired.pt")),
                             self.run_dir / "checkpoints" / "last.ckpt"] if p.exists()]
        if files:
            art = wandb.Artifact(f"{self.wandb_run.id}-models", type="model",
                                 description="final_model.pt (the final model), each post-training defense's "
                                             "repair, and checkpoints/last.ckpt (the trained model theta_T)")
            for p in files:
                art.add_file(str(p))
            self.wandb_run.log_artifact(art)
