"""All randomness derives from (seed, round, client_id, purpose), never from the rank.

``derive_seed`` hashes its keys with BLAKE2b, so streams for different keys are independent and
the same keys give the same stream on any process, in any order, after any resume.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (e.g. round, client id, "train")."""
    text = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


@contextmanager
def seeded_global_rng(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Inside the block the global RNG (CPU, and ``device``'s when it is a GPU) is seeded with
    ``seed``; afterwards it is restored. Dropout draws from it.

    The same streams as ``torch.random.fork_rng()`` + ``torch.manual_seed(seed)``, but without
    their overhead: once ``torch._dynamo`` is imported, both pass through its disable wrapper,
    which formats a stack trace on every call; the W-overhead profile (1,500 clients) spent 1.0 s of
    a 1.7 s training loop there (docs/benchmarks.md).
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):  # MPS, XPU, ...: the generic (slower) path
        with torch.random.fork_rng(device_type=device.type):
            torch.manual_seed(seed)
            yield
        return
    cpu = torch.default_generator
    saved = cpu.get_state()
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
        saved_gpu = gpu.get_state()
        gpu.manual_seed(seed)
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        cpu.set_state(saved)
        if gpu is not None:
            gpu.set_state(saved_gpu)
