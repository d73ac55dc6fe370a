"""Layer-input activations for the attacks that adapt to FLAIN (``dormancy``, ``camouflage``).

FLAIN (Ding, Yang, Huang, ICMR 2025, arXiv 2408.08655) ranks the *input* neurons of a layer by
their mean activation on clean data: for ``nn.Linear`` the last dimension of the layer's input,
for ``nn.Conv2d`` its input channels (dimension 1). The attacker measures the same quantity on
its own clean data. Kept independent of ``flain`` on purpose: the simulator must not import the
defense it is attacked with.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from fedsim.params import ParamLayout


def check_layer(field: str, name: str, layout: ParamLayout) -> None:
    """ValueError naming ``field`` (e.g. "DormancyAware.layers") unless ``name`` is a Linear /
    Conv2d layer of the model (a trainable ``<name>.weight`` of 2 or 4 dimensions)."""
    weights = [e.name[: -len(".weight")] for e in layout.entries
               if e.trainable and e.name.endswith(".weight") and len(e.shape) in (2, 4)]
    if name not in weights:
        raise ValueError(f"{field} must name nn.Linear / nn.Conv2d layers of the model, got {name!r}; "
                         f"choose from {weights}")


def resolve(model: nn.Module, name: str) -> nn.Module:
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"layer {name!r} of {type(model).__name__} is not an nn.Linear / nn.Conv2d")
    return module


def neuron_dim(module: nn.Module) -> int:
    """Dimension of the layer's input that indexes its input neurons."""
    return -1 if isinstance(module, nn.Linear) else 1


def per_neuron(a: Tensor, module: nn.Module) -> Tensor:
    """``[B, in]``: each sample's activation of every input neuron (mean over the other dims,
    i.e. over spatial positions for a convolution)."""
    a = a.movedim(neuron_dim(module), -1)
    return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)


@contextmanager
def inputs_of(model: nn.Module, names: list[str]) -> Iterator[dict[str, list[Tensor]]]:
    """Records the input of each named layer on every forward inside the block."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [resolve(model, n).register_forward_pre_hook(lambda m, i, n=n: seen[n].append(i[0]))
               for n in names]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_activations(model: nn.Module, names: list[str], x: Tensor, normalize: Callable[[Tensor], Tensor],
                     batch_size: int) -> dict[str, Tensor]:
    """Mean input-neuron activation ``[in]`` (float64 sums, float32 result) of each named layer
    on raw inputs ``x``, in eval mode (no dropout, BatchNorm running statistics untouched)."""
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    try:
        for xb in x.split(batch_size):
            with inputs_of(model, names) as seen:
                model(normalize(xb))
            for n in names:
                s = per_neuron(seen[n][0], resolve(model, n)).double().sum(0)
                sums[n] = s if n not in sums else sums[n] + s
    finally:
        model.train(was_training)
    return {n: (s / max(len(x), 1)).float() for n, s in sums.items()}
