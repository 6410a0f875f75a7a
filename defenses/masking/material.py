"""Key material containers that never print their contents, and the randomness the parties draw.

``Secret`` wraps bytes so that ``repr``, ``str``, f-strings, logging and results show a placeholder;
code that really needs the value calls ``reveal()``. ``Entropy`` is the byte source every party draws
keys, seeds and Shamir coefficients from.
"""

from __future__ import annotations

import os

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class Secret:
    """Bytes that must not appear in logs, ``repr`` or results."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes):
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # pickling would be a way to leak it into result files
        raise TypeError("Secret values cannot be pickled")


class Entropy:
    """A ChaCha20 keystream used as a deterministic random bit generator.

    Seeded from the run's ``torch.Generator`` (reproducible simulation: the same scenario and seed give
    the same keys, masks and transcript) or from ``os.urandom`` (what a deployment must do: keys drawn
    from a generator whose seed is public are not secret from anyone who knows the seed).
    """

    __slots__ = ("_stream",)

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise ValueError("entropy seed must be 32 bytes")
        self._stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()

    @classmethod
    def from_generator(cls, rng: torch.Generator) -> Entropy:
        seed = torch.randint(0, 256, (32,), generator=rng, dtype=torch.uint8).numpy().tobytes()
        return cls(seed)

    @classmethod
    def from_os(cls) -> Entropy:
        return cls(os.urandom(32))

    def draw(self, num_bytes: int) -> bytes:
        return self._stream.update(bytes(num_bytes))

    def __repr__(self) -> str:
        return "Entropy(<hidden>)"

    def __reduce__(self):
        raise TypeError("Entropy cannot be pickled")
