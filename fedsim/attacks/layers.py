"""Layer-input activations for the attacks that adapt to FLAIN (``dormancy``, ``camouflage``).

FLAIN (Ding, Yang, Huang, ICMR 2025, arXiv 2408.08655) ranks the *input* neurons of a layer by
their mean activation on clean data: for ``nn.Linear`` the last dimension of the layer's input,
for ``nn.Conv2d`` its input channels (dimension 1). The attacker measures the same quantity on
its own clean data. Kept independent of ``flain`` on purpose: the simulator must not import the
defense it is attacked with.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from fedsim.attacks.base import AttackContext, ClientContext, ModelPoison
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


class ActivationAware(ModelPoison):
    """Base of the model parts that know FLAIN's statistic: once per client and round
    (``measure``, called from ``before_training``) they measure the mean input activation of each
    of ``layers`` on the current global model and the client's clean data
    (``mean_activations``). Holds the shared settings, their checks (named after the subclass)
    and which client the measurement belongs to (``known``)."""

    def __init__(self, layers: Union[str, Sequence[str]], batch_size: int) -> None:
        owner = type(self).__name__
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers or not all(isinstance(n, str) and n for n in layers):
            raise ValueError(f"{owner}.layers must be a non-empty list of layer names, got {layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"{owner}.layers must not repeat a layer, got {layers!r}")
        if batch_size < 1:
            raise ValueError(f"{owner}.batch_size must be >= 1, got {batch_size}")
        self.layers, self.batch_size = layers, batch_size
        self._client: Optional[tuple[int, int]] = None
        self.activations: dict[str, Tensor] = {}  # layer -> [in] mean clean activation (global model)

    def connect(self, ctx: AttackContext) -> None:
        super().connect(ctx)
        for name in self.layers:
            check_layer(f"{type(self).__name__}.layers", name, ctx.layout)

    def measure(self, model: nn.Module, x: Tensor, normalize: Callable[[Tensor], Tensor], ctx: ClientContext,
                skip: bool = False) -> dict[str, Tensor]:
        """Measures (unless ``skip`` or ``x`` is empty: nothing) and remembers for this client."""
        self._client = (ctx.round, ctx.client_id)
        self.activations = {} if skip or len(x) == 0 else mean_activations(
            model, self.layers, x, normalize, self.batch_size)
        return self.activations

    def known(self, ctx: ClientContext) -> bool:
        """Whether ``measure`` ran for the client being trained (False on direct use)."""
        return self._client == (ctx.round, ctx.client_id)
