"""What a run prints when it ends (rank 0): the trained model and each post-training defense.

The progress bar's last ACC / ASR are theta_T's, before any post-training defense; this table
puts the before and after side by side so a reader does not take the one for the other::

    run folder: runs/quickstart (15 rounds)
    model                ACC     ASR  aux ACC  notes
    trained (theta_T)  90.4%   94.9%    89.6%
    flain              90.4%    2.3%    89.6%  k=0.0025, 407 of 3136 input neurons flipped  <- final model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.curves import post_blocks


def _pct(block: dict[str, Any], key: str) -> str:
    value = block.get(key)
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "–"


def _k(value: Any) -> str:
    return "none" if value is None else f"{value:.4g}"  # None: that layer flipped nothing


def _notes(block: dict[str, Any]) -> str:
    parts = []
    if "k" in block and block.get("flipped_neurons") is not None:
        k = block["k"]
        ks = ", ".join(_k(v) for v in k) if isinstance(k, list) else _k(k)
        parts.append(f"k={ks}, {block['flipped_neurons']} of {block.get('total_neurons', '?')} input neurons flipped")
    if isinstance(block.get("seconds"), (int, float)):
        parts.append(f"{block['seconds']:.1f} s")
    return ", ".join(parts)


def summary_table(summary: dict[str, Any], run_dir: Path) -> str:
    """The end-of-run table: trained model, then one row per post-training defense."""
    trained = summary.get("trained", {})
    final_from = summary.get("final", {}).get("model", "trained")
    rows = [("trained (theta_T)", trained, "")]
    for name, block in post_blocks(summary).items():
        after = {key: block.get(f"{key}_after") for key in ("acc", "asr", "aux_acc")}
        rows.append((name, after, _notes(block)))
    width = max(len(r[0]) for r in rows)
    lines = [f"run folder: {run_dir} ({summary.get('rounds', '?')} rounds)",
             f"{'model':<{width}}  {'ACC':>6}  {'ASR':>6}  {'aux ACC':>7}  notes"]
    for name, block, notes in rows:
        source = "trained" if name.startswith("trained") else name
        mark = "  <- final model" if source == final_from else ""
        lines.append(f"{name:<{width}}  {_pct(block, 'acc'):>6}  {_pct(block, 'asr'):>6}  "
                     f"{_pct(block, 'aux_acc'):>7}  {notes}{mark}".rstrip())
    files = ["summary.json", "metrics.csv", "rounds.jsonl", "final_model.pt", "checkpoints/last.ckpt"]
    files += [f"{name}_repaired.pt" for name in post_blocks(summary)]
    lines.append("files: " + ", ".join(f for f in files if (Path(run_dir) / f).exists()))
    return "\n".join(lines)
