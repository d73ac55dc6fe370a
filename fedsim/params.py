"""Model parameters as one flat vector.

This is the only module that knows the layout of a model's state as a vector. The layout is:

    [ trainable parameters (in ``named_parameters`` order) | floating buffers (BatchNorm
      running mean / var, in ``named_buffers`` order) ]

``ParamLayout.num_weights`` marks the boundary. Aggregators only ever see the first part
(``updates[:, :num_weights]``); the buffer part is always combined with a sample-weighted mean.
Mixing running statistics into the vectors that robust rules compare is a known pitfall of
FLAME re-implementations (some cluster flattened state dicts that include BatchNorm running
means and variances), so we keep them apart by construction.
Integer buffers (``num_batches_tracked``) are not federated: ``load`` resets them to zero, so a
client's training never depends on which clients its process trained before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    trainable: bool

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


class ParamLayout:
    """Maps a module's parameters and float buffers to and from one flat vector."""

    def __init__(self, module: nn.Module) -> None:
        entries: list[Entry] = []
        offset = 0
        for name, p in module.named_parameters():
            entries.append(Entry(name, tuple(p.shape), offset, p.numel(), True))
            offset += p.numel()
        self.num_weights = offset
        for name, b in module.named_buffers():
            if b.is_floating_point():
                entries.append(Entry(name, tuple(b.shape), offset, b.numel(), False))
                offset += b.numel()
        self.numel = offset
        self.entries = entries
        self._by_name = {e.name: e for e in entries}

    def __getitem__(self, name: str) -> Entry:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def num_buffers(self) -> int:
        return self.numel - self.num_weights

    def _tensors(self, module: nn.Module) -> list[Tensor]:
        state = dict(module.named_parameters())
        state.update(dict(module.named_buffers()))
        return [state[e.name] for e in self.entries]

    @torch.no_grad()
    def flatten(self, module: nn.Module) -> Tensor:
        """Returns a new 1-D float32 tensor ``[numel]`` on the module's device."""
        return torch.cat([t.detach().reshape(-1).float() for t in self._tensors(module)])

    @torch.no_grad()
    def load(self, module: nn.Module, vec: Tensor) -> None:
        """Copies ``vec`` (``[numel]``) into the module's parameters and float buffers in place."""
        if vec.numel() != self.numel:
            raise ValueError(f"vector has {vec.numel()} entries, layout expects {self.numel}")
        for e, t in zip(self.entries, self._tensors(module)):
            t.copy_(vec[e.slice].view(e.shape))
        for b in module.buffers():  # e.g. num_batches_tracked: restart per load, so a client's
            if not b.is_floating_point():  # training never depends on what its rank did before
                b.zero_()

    def view(self, vec: Tensor, name: str) -> Tensor:
        """The slice of ``vec`` that holds tensor ``name``, reshaped to its shape (a view)."""
        e = self._by_name[name]
        return vec[..., e.slice].reshape(*vec.shape[:-1], *e.shape)
