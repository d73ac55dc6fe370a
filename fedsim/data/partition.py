"""Split a labelled pool among federated clients: IID, Dirichlet label skew, label shards.

- ``IID``: a uniformly random split into near-equal parts.
- ``Dirichlet``: per class, the class's samples are divided among clients in proportions drawn
  from Dir(alpha), as in Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural
  Networks", ICML 2019, and Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An
  Experimental Study", ICDE 2022 (arXiv 2102.02079). Small alpha -> each client sees few classes.
- ``Shards``: the pathological split of McMahan et al., "Communication-Efficient Learning of Deep
  Networks from Decentralized Data", AISTATS 2017: sort by label, cut into
  ``num_clients * classes_per_client`` shards, deal ``classes_per_client`` random shards to each.

FLAIN (Ding, Yang, Huang, arXiv 2408.08655) evaluates under IID and Dirichlet non-IID splits.
Every partitioner is driven only by the ``torch.Generator`` it receives, so a split is a pure
function of (labels, num_clients, seed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.schema import PositiveFloat, PositiveInt

__all__ = ["Partitioner", "IID", "Dirichlet", "Shards", "client_sizes"]


class Partitioner:
    """Base class: ``partitioner(labels, num_clients, generator) -> list of index tensors``.

    The result is a partition of ``range(len(labels))``: every index appears in exactly one
    client's tensor, each tensor is sorted ascending and non-empty. Subclasses implement
    ``_split``; validation and sorting happen here.
    """

    def __call__(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        _check_inputs(labels, num_clients)
        parts = self._split(labels, num_clients, generator)
        parts = [torch.sort(p).values for p in parts]
        empty = [c for c, p in enumerate(parts) if p.numel() == 0]
        if empty:
            raise ValueError(
                f"fed.num_clients: partition left client(s) {empty[:10]} empty "
                f"({len(labels)} samples, {num_clients} clients); use fewer clients or more data"
            )
        return parts

    def _split(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        raise NotImplementedError


def _check_inputs(labels: Tensor, num_clients: int) -> None:
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be a 1-D int64 tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    if not 1 <= num_clients <= len(labels):
        raise ValueError(f"fed.num_clients must be in [1, {len(labels)}] (the number of samples), got {num_clients}")


def client_sizes(parts: list[Tensor]) -> Tensor:
    """Number of samples per client, ``int64 [num_clients]``."""
    return torch.tensor([p.numel() for p in parts], dtype=torch.int64)


class IID(Partitioner):
    """Uniformly random split into ``num_clients`` parts whose sizes differ by at most one."""

    def _split(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        perm = torch.randperm(len(labels), generator=generator)
        return list(torch.tensor_split(perm, num_clients))


class Dirichlet(Partitioner):
    """Label skew: each class is divided among the clients in proportions ~ Dir(alpha).

    Args:
        alpha: Dirichlet concentration, > 0. Small values (0.1) give highly skewed clients,
            large values (100) approach IID.
        min_size: every client must receive at least this many samples; the split is redrawn
            (from the same generator) up to ``max_tries`` times until it does.
        max_tries: how many draws to attempt before giving up with an error.
    """

    def __init__(self, alpha: PositiveFloat = 0.5, min_size: PositiveInt = 1, max_tries: PositiveInt = 100) -> None:
        if not alpha > 0:
            raise ValueError(f"partition.alpha must be > 0, got {alpha}")
        if min_size < 1:
            raise ValueError(f"partition.min_size must be >= 1, got {min_size}")
        if max_tries < 1:
            raise ValueError(f"partition.max_tries must be >= 1, got {max_tries}")
        self.alpha = float(alpha)
        self.min_size = int(min_size)
        self.max_tries = int(max_tries)

    def _split(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        if self.min_size * num_clients > len(labels):
            raise ValueError(
                f"partition.min_size={self.min_size} x fed.num_clients={num_clients} exceeds the "
                f"{len(labels)} samples; lower partition.min_size or fed.num_clients"
            )
        for _ in range(self.max_tries):
            parts = self._draw(labels, num_clients, generator)
            if min(p.numel() for p in parts) >= self.min_size:
                return parts
        raise ValueError(
            f"partition.alpha={self.alpha}: no split in {self.max_tries} draws gave every client "
            f">= partition.min_size={self.min_size} samples; raise partition.alpha or lower partition.min_size"
        )

    def _draw(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        chunks: list[list[Tensor]] = [[] for _ in range(num_clients)]
        for cls in torch.unique(labels).tolist():
            idx = (labels == cls).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            cuts = (self._proportions(num_clients, generator).cumsum(0) * len(idx)).round().long()
            for c, piece in enumerate(torch.tensor_split(idx, cuts[:-1])):
                chunks[c].append(piece)
        return [torch.cat(c) for c in chunks]

    def _proportions(self, num_clients: int, generator: torch.Generator) -> Tensor:
        """One Dir(alpha) draw over clients, as normalised Gamma(alpha) variables built in log space.

        Gamma(a) = Gamma(a + 1) * U^(1/a) (Marsaglia & Tsang 2000); taking logs keeps tiny alphas
        exact, where torch clamps Gamma(alpha) draws at the smallest float and would tie them all.
        """
        alpha = torch.full((num_clients,), self.alpha, dtype=torch.float64)
        log_gamma = torch._standard_gamma(alpha + 1.0, generator=generator).log()
        uniform = torch.rand(num_clients, dtype=torch.float64, generator=generator).clamp_min(1e-300)
        return torch.softmax(log_gamma + uniform.log() / alpha, dim=0)


class Shards(Partitioner):
    """McMahan et al.'s pathological non-IID split: each client gets ``classes_per_client`` shards.

    The pool is sorted by label (stable), cut into ``num_clients * classes_per_client`` shards of
    near-equal size, and the shards are dealt to clients in a random order. A client holds at most
    ``classes_per_client`` labels when shard boundaries align with classes (more when a shard
    straddles two classes, fewer when it draws two shards of one class).

    Args:
        classes_per_client: shards per client, >= 1 (2 in McMahan et al.).
    """

    def __init__(self, classes_per_client: PositiveInt = 2) -> None:
        if classes_per_client < 1:
            raise ValueError(f"partition.classes_per_client must be >= 1, got {classes_per_client}")
        self.classes_per_client = int(classes_per_client)

    def _split(self, labels: Tensor, num_clients: int, generator: torch.Generator) -> list[Tensor]:
        num_shards = num_clients * self.classes_per_client
        if num_shards > len(labels):
            raise ValueError(
                f"partition.classes_per_client={self.classes_per_client} x fed.num_clients={num_clients} "
                f"shards exceed the {len(labels)} samples; lower one of them"
            )
        order = torch.sort(labels, stable=True).indices
        shards = torch.tensor_split(order, num_shards)
        deal = torch.randperm(num_shards, generator=generator).view(num_clients, self.classes_per_client)
        return [torch.cat([shards[s] for s in row.tolist()]) for row in deal]
