"""Datasets, client partitions and the federated view (client pool, test set, server aux set).

Short ``class_path`` names resolve here, e.g. ``fedsim.data.EmbeddedMNIST``, ``fedsim.data.Dirichlet``.
"""

from fedsim.data.datasets import (
    CIFAR10,
    EMNIST,
    MNIST,
    Dataset,
    DatasetSplits,
    EmbeddedMNIST,
    FashionMNIST,
    Split,
)
from fedsim.data.federated import FederatedData, build_federated
from fedsim.data.partition import IID, Dirichlet, Partitioner, Shards, client_sizes

__all__ = [
    "CIFAR10",
    "EMNIST",
    "MNIST",
    "Dataset",
    "DatasetSplits",
    "EmbeddedMNIST",
    "FashionMNIST",
    "Split",
    "FederatedData",
    "build_federated",
    "IID",
    "Dirichlet",
    "Partitioner",
    "Shards",
    "client_sizes",
]
