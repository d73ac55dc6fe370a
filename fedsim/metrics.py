"""Metric definitions, in one place (the README repeats them).

- Clean accuracy (ACC): share of clean test inputs classified correctly.
- Per-class accuracy: for each true class c, share of its test inputs classified as c.
- Attack success rate (ASR): share of *triggered* test inputs classified as the attacker's
  target, counted only over inputs whose true label is not the target (one-to-one attacks: only
  the source class). Which inputs count is decided by ``Attack.test_set``; counting samples that
  already belong to the target class is a known pitfall (it inflates the ASR by the clean
  accuracy on the target class, as BackdoorBench's metric definitions point out) that this excludes.
- Auxiliary accuracy: clean accuracy on the server's auxiliary set (what FLAIN may look at).
- Detection (rules that accept or reject clients, ``detection``): ``detect/tpr`` = share of the
  round's attackers rejected, ``detect/fpr`` = share of honest clients rejected,
  ``detect/accepted`` = clients kept; the truth is the attack schedule's.

The ``*_counts`` functions return sums, so ranks can each evaluate a shard and add them up.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def eval_batch_size(x: Tensor) -> int:
    """Evaluation batch: 256 on CPU, 1024 on a GPU. On this project's 2-core CPU, MnistCNN
    evaluated 10,000 digits in 0.95 s at batch 256 and 2.14 s at 1024 (activations of a large
    batch fall out of cache); a GPU prefers larger batches."""
    return 1024 if x.device.type == "cuda" else 256


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[slice]:
    """This rank's evaluation batches. Batch ``c`` is always samples ``[c * B, (c + 1) * B)`` and
    goes to rank ``c % world``: every sample meets the same batch-mates for any process count,
    so each batch's outputs (and sums) are the same numbers with 1 or N processes."""
    return [slice(s, min(s + batch_size, n)) for s in range(rank * batch_size, n, world * batch_size)]


@torch.no_grad()
def clean_counts(model: nn.Module, x: Tensor, y: Tensor, normalize: Callable, num_classes: int,
                 batch_size: int | None = None, batches: list[slice] | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Returns (confusion matrix [C, C] as float counts, summed cross-entropy per batch
    [len(batches)]). ``batches`` default: all of ``x`` in batches of ``batch_size``."""
    if batches is None:
        batches = shard_batches(len(y), batch_size or eval_batch_size(x))
    conf = torch.zeros(num_classes, num_classes, device=x.device)
    loss = torch.zeros(len(batches), device=x.device)
    for i, b in enumerate(batches):
        logits = model(normalize(x[b]))
        loss[i] = F.cross_entropy(logits, y[b], reduction="sum")
        conf += confusion_matrix(logits.argmax(1), y[b], num_classes)
    return conf, loss


def ordered_sum(values: Tensor) -> Tensor:
    """``[1]``: the values added one by one in order, in their dtype (the same bits for any
    process count, unlike a reduction whose order depends on the shards)."""
    total = torch.zeros(1, dtype=values.dtype, device=values.device)
    for v in values:
        total += v
    return total


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[C, C] float counts, row = true class, column = predicted class: the same matrix as
    ``torchmetrics.functional.classification.multiclass_confusion_matrix`` (tests check it), in one
    ``bincount`` and without its per-call input validation."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).float()


@torch.no_grad()
def target_hits(model: nn.Module, x: Tensor, target: Tensor, normalize: Callable,
                batch_size: int | None = None, batches: list[slice] | None = None) -> Tensor:
    """Returns [hits, total]: how many inputs (of ``batches``; default all) the model classifies
    as their ``target`` label."""
    if batches is None:
        batches = shard_batches(len(target), batch_size or eval_batch_size(x))
    hits = torch.zeros(2, device=x.device)
    for b in batches:
        pred = model(normalize(x[b])).argmax(1)
        hits[0] += (pred == target[b]).sum()
        hits[1] += len(target[b])
    return hits


def summarize_clean(conf: Tensor, loss: Tensor) -> dict:
    total = conf.sum().clamp_min(1)
    per_class = conf.diagonal() / conf.sum(1).clamp_min(1)
    return {"acc": float(conf.diagonal().sum() / total), "loss": float(loss.sum() / total),
            "per_class_acc": [round(float(a), 6) for a in per_class]}


def rate(hits: Tensor) -> float:
    return float(hits[0] / hits[1].clamp_min(1))


def detection(accepted: Tensor, malicious: Tensor) -> dict[str, float]:
    """Detection scores of a rule that accepts/rejects clients (bool ``[n]`` each), against the
    schedule's truth: ``detect/accepted``, ``detect/fpr`` and, when the round had attackers,
    ``detect/tpr``."""
    rejected = ~accepted
    tp = int((rejected & malicious).sum())
    fp = int((rejected & ~malicious).sum())
    out = {"detect/accepted": int(accepted.sum()), "detect/fpr": fp / max(int((~malicious).sum()), 1)}
    if malicious.any():
        out["detect/tpr"] = tp / int(malicious.sum())
    return out
