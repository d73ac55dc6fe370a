"""Channel-level helpers shared by the pruning baselines: find a layer, rank its output
channels by mean activation, zero channels, and measure accuracy on the auxiliary set.

Used by ``FinePruning`` (Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018) and ``FLPruning`` (Wu et al., "Mitigating Backdoor
Attacks in Federated Learning", arXiv 2011.01767).

A "channel" is an output filter of an ``nn.Conv2d`` or an output unit of an ``nn.Linear``. When
the layer is directly followed by a ``BatchNorm`` over the same channels (the next sibling
module in its parent, as in ``CifarCNN``'s ``Sequential(conv, bn, relu)`` and ResNet blocks), the
activation is read after that BatchNorm and pruning also zeroes its affine weight and bias:
zeroing only the filter would leave the constant ``beta - gamma * mean / std`` on the channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRUNABLE = (nn.Conv2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose output channels can be pruned, and the BatchNorm that follows it (if any)."""

    name: str
    layer: nn.Module
    norm: nn.Module | None

    @property
    def num_channels(self) -> int:
        return self.layer.weight.shape[0]

    @property
    def probe(self) -> nn.Module:
        """The module whose output (after a ReLU) is the channel activation."""
        return self.norm if self.norm is not None else self.layer


def prunable_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` / ``nn.Linear`` in ``model``, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def _following_norm(model: nn.Module, name: str, channels: int) -> nn.Module | None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    siblings = list(parent.named_children())
    index = [n for n, _ in siblings].index(child)
    if index + 1 < len(siblings):
        nxt = siblings[index + 1][1]
        if isinstance(nxt, _BATCHNORMS) and nxt.num_features == channels and nxt.affine:
            return nxt
    return None


def find_layer(model: nn.Module, name: str | None, field: str) -> PrunableLayer:
    """Resolve ``name`` (``None``: the last ``nn.Conv2d``) to a ``PrunableLayer``.

    Raises:
        ValueError: naming ``field`` and listing the available layers.
    """
    names = prunable_names(model)
    if name is None:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{field}: the model has no nn.Conv2d; choose one of {names}")
        name = convs[-1]
    if name not in names:
        raise ValueError(f"{field} must name an nn.Conv2d or nn.Linear layer, one of {names}, got {name!r}")
    layer = model.get_submodule(name)
    return PrunableLayer(name, layer, _following_norm(model, name, layer.weight.shape[0]))


@torch.no_grad()
def zero_channels(target: PrunableLayer, channels: Tensor) -> None:
    """Zero the filters/rows (and biases, and the following BatchNorm's affine) of ``channels``."""
    if channels.numel() == 0:
        return
    tensors = [target.layer.weight, target.layer.bias]
    if target.norm is not None:
        tensors += [target.norm.weight, target.norm.bias]
    for t in tensors:
        if t is not None:
            t[channels.to(t.device)] = 0.0


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def mean_activation(model: nn.Module, target: PrunableLayer, x: Tensor, normalize, device,
                    batch_size: int = 512) -> Tensor:
    """Mean post-ReLU activation per channel, ``[C]`` (conv: over batch and positions). The model
    must already be in eval mode."""
    total = torch.zeros(target.num_channels, dtype=torch.float64, device=device)
    count = 0

    conv = isinstance(target.layer, nn.Conv2d)

    def hook(_module, _inputs, out: Tensor) -> None:
        nonlocal count
        act = out.relu().double()  # conv: [B, C, H, W]; linear: [..., C]
        ch = 1 if conv else act.dim() - 1
        total.add_(act.sum(dim=[d for d in range(act.dim()) if d != ch]))
        count += act.numel() // act.shape[ch]

    handle = target.probe.register_forward_hook(hook)
    try:
        for s in _batches(len(x), batch_size):
            model(normalize(x[s].to(device)))
    finally:
        handle.remove()
    return (total / max(count, 1)).float().cpu()


def rank_channels(activation: Tensor) -> Tensor:
    """Channel indices from least to most active (ties: lower index first)."""
    return torch.sort(activation, stable=True).indices


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, normalize, device, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model(normalize(x))`` against ``y``; the model must be in eval mode."""
    correct = 0
    for s in _batches(len(x), batch_size):
        pred = model(normalize(x[s].to(device))).argmax(dim=1)
        correct += int((pred == y[s].to(device)).sum())
    return correct / max(len(x), 1)
