"""Input-neuron activations of one layer, and the network split around that layer.

FLAIN (Ding, Yang, Huang, "FLAIN: Mitigating Backdoor Attacks in Federated Learning via
Flipping Weight Updates of Low-Activation Input Neurons", ICMR 2025, arXiv 2408.08655) ranks the
*input* neurons of a layer by their mean activation on clean auxiliary data. Its threshold search
then evaluates many variants of that one layer. Everything before the layer is the same for all
of them, so we run it once and cache what the rest of the network needs ("head"), and evaluate
each variant only through the layers after it ("tail"):

* fast path: ``torch.fx`` traces the model; the head returns the layer's input plus every other
  value that later nodes read (skip connections); the tail takes the layer's *output* as input.
* fallback (models fx cannot trace): a forward pre-hook caches the layer's input, and the tail is
  the full model with a forward hook that swaps the layer's output for the one we computed.
  Correct for any model that calls the layer once per forward, but it re-runs the head.

``FlipEvaluator`` evaluates the variants of the layer through the tail, incrementally.

Supported layers: ``nn.Linear`` (input neurons = last dimension) and, as an extension,
``nn.Conv2d`` with ``groups == 1`` (input neurons = input channels, dimension 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LayerSpec:
    """A layer FLAIN can repair: its name, module, and the dimension of its input neurons."""

    name: str
    module: nn.Module

    @property
    def channel_dim(self) -> int:
        return -1 if isinstance(self.module, nn.Linear) else 1

    def apply(self, x: Tensor, w: Tensor) -> Tensor:
        """The layer's map without bias: ``x @ w.T`` or ``conv2d(x, w)``."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, w)
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation)

    def add_bias(self, u: Tensor, bias: Tensor | None) -> Tensor:
        if bias is None:
            return u
        return u + (bias if self.channel_dim == -1 else bias.view(1, -1, 1, 1))

    def mean_activation(self, x: Tensor) -> Tensor:
        """Mean of ``x`` over every dimension but the input-neuron one: float32 ``[in]``."""
        xd = x.double().movedim(self.channel_dim, -1)
        return xd.reshape(-1, xd.shape[-1]).mean(0).float()


def repairable_layers(model: nn.Module) -> list[str]:
    """Names of the modules FLAIN can repair (``nn.Linear``; ``nn.Conv2d`` with groups 1)."""
    return [n for n, m in model.named_modules() if _supported(m)]


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return m.groups == 1 and m.padding_mode == "zeros"
    return isinstance(m, nn.Linear)


def resolve_layer(model: nn.Module, name: str) -> LayerSpec:
    """The ``LayerSpec`` of module ``name``; ValueError listing the valid names otherwise."""
    module = dict(model.named_modules()).get(name)
    if module is None or not _supported(module):
        raise ValueError(f"flain.layers: {name!r} is not a repairable layer of "
                         f"{type(model).__name__}; choose from {repairable_layers(model)}")
    return LayerSpec(name, module)


@dataclass
class LayerCache:
    """What the head produced for the whole auxiliary set: the layer's input ``x`` and the other
    values the tail reads (``extras``, one tensor per value, batch first)."""

    x: Tensor
    extras: list[Tensor]


class NetworkSplit:
    """Head/tail split of ``model`` around layer ``spec`` (see the module docstring)."""

    def __init__(self, model: nn.Module, spec: LayerSpec) -> None:
        self.model, self.spec = model, spec
        try:
            self.head, self.tail = _fx_split(model, spec.name)
            self.fast = True
        except Exception:  # untraceable model (data-dependent control flow): use the hooks
            self.fast = False

    @torch.no_grad()
    def capture(self, x: Tensor, batch_size: int) -> LayerCache:
        """Runs the head over ``x`` (already normalised) in batches; model in eval mode."""
        self.model.eval()
        outs = [self._head(xb) for xb in x.split(batch_size)]
        return LayerCache(torch.cat([o[0] for o in outs]),
                          [torch.cat([o[i] for o in outs]) for i in range(1, len(outs[0]))])

    @torch.no_grad()
    def logits(self, z: Tensor, extras: list[Tensor], x: Tensor | None) -> Tensor:
        """Model output when the layer outputs ``z``. The fallback needs the batch input ``x``."""
        if self.fast:
            return self.tail(z, *extras)
        handle = self.spec.module.register_forward_hook(lambda m, i, o: z)
        try:
            return self.model(x)
        finally:
            handle.remove()

    def _head(self, xb: Tensor) -> list[Tensor]:
        if self.fast:
            return list(self.head(xb))
        seen: list[Tensor] = []
        handle = self.spec.module.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
        try:
            self.model(xb)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ValueError(f"flain.layers: {self.spec.name!r} runs {len(seen)} times per "
                             "forward pass; FLAIN needs a layer that runs exactly once")
        return seen


def _fx_split(model: nn.Module, name: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    was_training = model.training
    model.eval()  # functional dropout / batch norm must not be traced in training mode
    try:
        gm = fx.symbolic_trace(model)
    finally:
        model.train(was_training)
    nodes = list(gm.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1 or len(calls[0].args) != 1 or calls[0].kwargs:
        raise RuntimeError("layer must be called once, with one positional input")
    target = calls[0]
    before = nodes[: nodes.index(target)]
    after = set(nodes[nodes.index(target):])
    dynamic = _input_dependent(before)
    # values computed before the layer that the tail reads (may include the layer's own input)
    frontier = [n for n in before if n in dynamic and any(u in after - {target} for u in n.users)]

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in before:
        if n.op != "output":
            env[n] = head.node_copy(n, lambda a: env[a])
    head.output(tuple(env[n] for n in [target.args[0], *frontier]))

    tail = fx.Graph()
    env = {target: tail.placeholder("layer_out")}
    env.update({n: tail.placeholder(f"extra_{i}") for i, n in enumerate(frontier)})
    for n in before:  # batch-independent values (get_attr chains): recomputed, DCE prunes
        if n not in dynamic:
            env[n] = tail.node_copy(n, lambda a: env[a])
    for n in nodes[nodes.index(target) + 1:]:
        env[n] = tail.node_copy(n, lambda a: env[a])
    modules = (fx.GraphModule(gm, head), fx.GraphModule(gm, tail))
    for m in modules:
        m.graph.eliminate_dead_code()
        m.recompile()
    return modules


def _input_dependent(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes whose value depends on a placeholder (the batch), in topological order."""
    dyn: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in dyn for a in n.all_input_nodes):
            dyn.add(n)
    return dyn


class FlipEvaluator:
    """Aux accuracy of the model with one layer's flipped weights, through the cached tail.

    Keeps ``U = apply(X, W_k)`` (no bias) in float64 and moves between nested flipped sets
    incrementally: flipping neuron j changes ``U`` by ``-2 * apply(X[j], D[:, j])`` and
    ``||W||^2`` by ``-4 <W0[:, j], D[:, j]>``, so the whole sweep costs about one layer pass."""

    def __init__(self, split: NetworkSplit, x: Tensor, y: Tensor, w0: Tensor, delta: Tensor,
                 bias: Optional[Tensor], batch_size: int) -> None:
        self.split, self.spec, self.batch_size = split, split.spec, batch_size
        self.x_in, self.y = x, y
        self.cache = split.capture(x, batch_size)
        self.act = self.spec.mean_activation(self.cache.x)
        self.x64 = self.cache.x.double()
        self.d2 = 2 * delta.double()
        self.bias = bias
        w_t = (w0 + delta).double()
        self.u_t = self.spec.apply(self.x64, w_t)
        self.norm2_t = float((w_t ** 2).sum())
        dims = [d for d in range(w0.dim()) if d != 1]
        self.col_dot = 4 * (w0.double() * delta.double()).sum(dims)
        self._reset()

    def _reset(self) -> None:
        self.u, self.norm2 = self.u_t.clone(), self.norm2_t
        self.mask = torch.zeros_like(self.act, dtype=torch.bool)

    def _advance(self, mask: Tensor) -> None:
        if (self.mask & ~mask).any():  # not a superset: start again from W_T
            self._reset()
        new = (mask & ~self.mask).nonzero().squeeze(1)
        if new.numel():
            cdim = self.spec.channel_dim
            self.u -= self.spec.apply(self.x64.index_select(cdim, new), self.d2.index_select(1, new))
            self.norm2 -= float(self.col_dot[new].sum())
        self.mask = mask.clone()

    def scale(self) -> float:
        """Factor that brings ``W_k`` back to the Frobenius norm of ``W_T``."""
        return math.sqrt(self.norm2_t / self.norm2) if self.norm2 > 0 else 1.0

    @torch.no_grad()
    def correct(self, mask: Tensor, rescale: bool) -> Tensor:
        """``[n]`` bool: which auxiliary inputs the model with ``mask``'s neurons flipped gets right."""
        self._advance(mask)
        z = self.spec.add_bias(self.u * (self.scale() if rescale else 1.0),
                               None if self.bias is None else self.bias.double()).float()
        out, bs = [], self.batch_size
        for i in range(0, z.shape[0], bs):
            extras = [e[i:i + bs] for e in self.cache.extras]
            logits = self.split.logits(z[i:i + bs], extras, self.x_in[i:i + bs])
            out.append(logits.argmax(1) == self.y[i:i + bs])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=self.y.device)

    def accuracy(self, mask: Tensor, rescale: bool) -> float:
        return int(self.correct(mask, rescale).sum()) / self.y.shape[0]
