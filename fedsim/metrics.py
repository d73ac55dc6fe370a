"""Metric definitions, in one place (the README repeats them).

- Clean accuracy (ACC): share of clean test inputs classified correctly.
- Per-class accuracy: for each true class c, share of its test inputs classified as c.
- Attack success rate (ASR): share of *triggered* test inputs classified as the attacker's
  target, counted only over inputs whose true label is not the target (one-to-one attacks: only
  the source class). Which inputs count is decided by ``Attack.test_set``; counting samples that
  already belong to the target class is a known pitfall (REFERENCES.md) that this excludes.
- Auxiliary accuracy: clean accuracy on the server's auxiliary set (what FLAIN may look at).

The ``*_counts`` functions return sums, so ranks can each evaluate a shard and add them up.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_confusion_matrix


@torch.no_grad()
def clean_counts(model: nn.Module, x: Tensor, y: Tensor, normalize: Callable, num_classes: int,
                 batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Returns (confusion matrix [C, C] as float counts, summed cross-entropy [1])."""
    conf = torch.zeros(num_classes, num_classes, device=x.device)
    loss = torch.zeros(1, device=x.device)
    for s in range(0, len(y), batch_size):
        logits = model(normalize(x[s : s + batch_size]))
        yb = y[s : s + batch_size]
        loss += F.cross_entropy(logits, yb, reduction="sum")
        conf += multiclass_confusion_matrix(logits.argmax(1), yb, num_classes).float()
    return conf, loss


@torch.no_grad()
def target_hits(model: nn.Module, x: Tensor, target: Tensor, normalize: Callable,
                batch_size: int = 1024) -> Tensor:
    """Returns [hits, total]: how many inputs the model classifies as their ``target`` label."""
    hits = torch.zeros(2, device=x.device)
    for s in range(0, len(target), batch_size):
        pred = model(normalize(x[s : s + batch_size])).argmax(1)
        hits[0] += (pred == target[s : s + batch_size]).sum()
    hits[1] = len(target)
    return hits


def summarize_clean(conf: Tensor, loss: Tensor) -> dict:
    total = conf.sum().clamp_min(1)
    per_class = conf.diagonal() / conf.sum(1).clamp_min(1)
    return {"acc": float(conf.diagonal().sum() / total), "loss": float(loss.sum() / total),
            "per_class_acc": [round(float(a), 6) for a in per_class]}


def rate(hits: Tensor) -> float:
    return float(hits[0] / hits[1].clamp_min(1))
