"""The federated view of a dataset: a client pool split among clients, a test set, and the
server's auxiliary clean set.

FLAIN (Ding, Yang, Huang, arXiv 2408.08655, ICMR 2025) assumes the server holds a small clean
auxiliary dataset, disjoint from client data and from the test set. The authors' reference
scripts take the first 80 samples per class of the *test* split (``--aux_samples 80``), which
then also stay in the test set. We draw ``aux_per_class`` samples per class from the training
split with ``generator(seed, "aux")``, remove them from the client pool, and then partition the
remaining pool with ``generator(seed, "partition")``: the auxiliary set is disjoint from both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fedsim.data.datasets import DatasetSplits, Split
from fedsim.data.partition import Partitioner, client_sizes
from fedsim.runtime.seeding import generator

__all__ = ["FederatedData", "build_federated"]


@dataclass(eq=False)
class FederatedData:
    """Client pool ``train`` with ``client_indices`` into it, test set, and server aux set.

    Attributes:
        name: dataset name.
        train: the client pool (the training split minus the auxiliary set).
        test: the test split.
        aux: the server's auxiliary clean set, disjoint from ``train`` and ``test``.
        client_indices: per client, sorted int64 indices into ``train``; a partition of it.
        num_classes: number of classes.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
    """

    name: str
    train: Split
    test: Split
    aux: Split
    client_indices: list[Tensor]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _stats: dict = field(default_factory=dict, init=False, repr=False)  # (device, dtype) -> (mean, std)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def sizes(self) -> Tensor:
        """Samples per client, int64 ``[num_clients]`` (on CPU)."""
        return client_sizes(self.client_indices)

    def client(self, cid: int) -> Split:
        """Client ``cid``'s local data."""
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client id must be in [0, {self.num_clients}), got {cid}")
        idx = self.client_indices[cid]
        return Split(self.train.x[idx], self.train.y[idx])

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel; ``x`` is ``[N, C, H, W]`` or ``[C, H, W]``."""
        key = (x.device, x.dtype)
        if key not in self._stats:
            shape = (-1, 1, 1)  # broadcast over H, W (and a leading batch dim)
            self._stats[key] = tuple(
                torch.tensor(v, device=x.device, dtype=x.dtype).view(shape) for v in (self.mean, self.std)
            )
        mean, std = self._stats[key]
        return (x - mean) / std

    def to(self, device: torch.device | str) -> FederatedData:
        """A copy with every tensor (splits and client indices) on ``device``."""
        return replace(
            self,
            train=_move(self.train, device),
            test=_move(self.test, device),
            aux=_move(self.aux, device),
            client_indices=[i.to(device) for i in self.client_indices],
        )


def _move(split: Split, device: torch.device | str) -> Split:
    return Split(split.x.to(device), split.y.to(device))


def build_federated(
    splits: DatasetSplits, partitioner: Partitioner, num_clients: int, aux_per_class: int, seed: int
) -> FederatedData:
    """Draw the server's auxiliary set from ``splits.train``, then partition the rest among clients.

    Args:
        splits: the loaded dataset.
        partitioner: how the client pool is divided (IID, Dirichlet, Shards).
        num_clients: number of clients.
        aux_per_class: auxiliary samples per class taken from the training split (FLAIN: 80).
        seed: the run's seed; streams ``(seed, "aux")`` and ``(seed, "partition")`` are used.
    """
    if aux_per_class < 0:
        raise ValueError(f"fed.aux_per_class must be >= 0, got {aux_per_class}")
    aux_idx = _draw_aux(splits.train.y, splits.num_classes, aux_per_class, generator(seed, "aux"))
    in_pool = torch.ones(len(splits.train), dtype=torch.bool)
    in_pool[aux_idx] = False
    pool = Split(splits.train.x[in_pool], splits.train.y[in_pool])
    parts = partitioner(pool.y, num_clients, generator(seed, "partition"))
    return FederatedData(
        name=splits.name,
        train=pool,
        test=splits.test,
        aux=Split(splits.train.x[aux_idx], splits.train.y[aux_idx]),
        client_indices=parts,
        num_classes=splits.num_classes,
        mean=splits.mean,
        std=splits.std,
    )


def _draw_aux(labels: Tensor, num_classes: int, per_class: int, gen: torch.Generator) -> Tensor:
    """``per_class`` random indices of every class, sorted ascending (int64)."""
    picks = []
    for cls in range(num_classes):
        idx = (labels == cls).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"fed.aux_per_class={per_class} exceeds the {len(idx)} training samples of class {cls}; "
                f"lower fed.aux_per_class (or raise data.limit_train)"
            )
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picks)).values if picks else torch.empty(0, dtype=torch.int64)
