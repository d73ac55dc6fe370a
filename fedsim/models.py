"""Models: the FLAIN reference CNNs, ResNet-18 for 32x32 inputs, and a tiny test net.

``MnistCNN`` and ``CifarCNN`` follow the architectures of the FLAIN authors' public scripts
(Ding, Yang, Huang, arXiv 2408.08655; github dingbinb/FLAIN ``src/models.py``) so that FLAIN's
default layer ``fc1`` means what it means in the paper. ``FmnistCNN`` is their Fashion-MNIST net.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.schema import PositiveInt, UnitInterval


def _check(owner: str, dropout: float = 0.0, **sizes: int) -> None:
    """The schema's ranges, for models built in code: sizes >= 1, dropout in [0, 1]."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{owner}.dropout must be in [0, 1], got {dropout}")


class Model(nn.Module):
    """Base class of the networks the command line accepts (``model: class_path``): a plain
    ``nn.Module``; subclass it for your own network so that ``--help`` lists only models."""


class MnistCNN(Model):
    """2 conv + fc1 + fc2 for 1x28x28 inputs (fc1 input 64*7*7 = 3136, 128 hidden units).

    Args:
        num_classes: output classes (10 for MNIST, 62 for EMNIST byclass).
        dropout: dropout probability before fc1 and before fc2 (0.5 in the reference).
    """

    def __init__(self, num_classes: PositiveInt = 10, dropout: UnitInterval = 0.5) -> None:
        _check("MnistCNN", num_classes=num_classes, dropout=dropout)
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.drop2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [B, 32, 14, 14]
        x = self.pool(self.relu(self.conv2(x)))  # [B, 64, 7, 7]
        x = self.drop1(x.flatten(1))  # [B, 3136]: the input neurons FLAIN inspects
        x = self.drop2(self.relu(self.fc1(x)))
        return self.fc2(x)


def _conv_bn(cin: int, cout: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=padding), nn.BatchNorm2d(cout), nn.ReLU())


class FmnistCNN(Model):
    """The reference Fashion-MNIST net: 5 conv+BN, fc1 (512*2*2 -> 256), fc2, fc3, fc4.

    Args:
        num_classes: output classes.
        dropout: dropout probability between the fully connected layers.
    """

    def __init__(self, num_classes: PositiveInt = 10, dropout: UnitInterval = 0.5) -> None:
        _check("FmnistCNN", num_classes=num_classes, dropout=dropout)
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, 32, 0), _conv_bn(32, 64, 0), nn.MaxPool2d(2),
            _conv_bn(64, 128, 0), _conv_bn(128, 256, 0), nn.MaxPool2d(2),
            _conv_bn(256, 512, 0),
        )  # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 -> 2
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(512 * 2 * 2, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 64)
        self.fc4 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.features(x).flatten(1))
        x = self.drop(F.relu(self.fc1(x)))
        x = self.drop(F.relu(self.fc2(x)))
        x = self.drop(F.relu(self.fc3(x)))
        return self.fc4(x)


class CifarCNN(Model):
    """The reference CIFAR-10 net: 6 conv+BN in 3 blocks, fc1 (256*4*4 -> 1024), fc2, fc3.

    Args:
        num_classes: output classes.
        dropout: dropout probability before each fully connected layer.
    """

    def __init__(self, num_classes: PositiveInt = 10, dropout: UnitInterval = 0.5) -> None:
        _check("CifarCNN", num_classes=num_classes, dropout=dropout)
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 64, 1), _conv_bn(64, 128, 1), nn.MaxPool2d(2),
            _conv_bn(128, 256, 1), _conv_bn(256, 256, 1), nn.MaxPool2d(2),
            _conv_bn(256, 256, 1), _conv_bn(256, 256, 1), nn.MaxPool2d(2),
        )
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(256 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.features(x).flatten(1))
        x = self.drop(F.relu(self.fc1(x)))
        x = self.drop(F.relu(self.fc2(x)))
        return self.fc3(x)


class ResNet18(Model):
    """torchvision's ResNet-18 adapted to 32x32 inputs (3x3 stem, no max-pool).

    Args:
        num_classes: output classes.
        in_channels: input channels (3 for CIFAR-10).
    """

    def __init__(self, num_classes: PositiveInt = 10, in_channels: PositiveInt = 3) -> None:
        _check("ResNet18", num_classes=num_classes, in_channels=in_channels)
        super().__init__()
        import torchvision  # only this model needs it

        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TinyNet(Model):
    """A small MLP for tests: flatten -> fc1 -> ReLU -> fc2.

    Args:
        num_classes: output classes.
        in_features: flattened input size (784 for 1x28x28).
        hidden: width of fc1.
    """

    def __init__(self, num_classes: PositiveInt = 10, in_features: PositiveInt = 784, hidden: PositiveInt = 32) -> None:
        _check("TinyNet", num_classes=num_classes, in_features=in_features, hidden=hidden)
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class LogReg(Model):
    """Multinomial logistic regression: one ``nn.Linear`` on the flattened input.

    Args:
        num_classes: output classes.
        in_features: flattened input size (784 for 1x28x28).
    """

    def __init__(self, num_classes: PositiveInt = 10, in_features: PositiveInt = 784) -> None:
        _check("LogReg", num_classes=num_classes, in_features=in_features)
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))
