"""Explicit randomness: generators derived from (scenario hash, seed, purpose...), never global seeds."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: object) -> torch.Generator:
    """A CPU generator determined by ``parts`` (e.g. scenario hash, seed, "round", 3, "client", 1)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run library code that draws from torch's global RNG (weight init) reproducibly, then restore
    the global state so nothing outside sees a seeded RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
