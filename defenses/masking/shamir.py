"""t-out-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

The field is larger than any 32-byte secret, so a secret is one field element and needs no chunking.
Share ``x`` coordinates are the holder's client id plus one (never zero: f(0) is the secret).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

PRIME = 2**521 - 1
"""A Mersenne prime; 521 bits exceed the 256 bits of an X25519 key or a mask seed."""
_ELEMENT_BYTES = (PRIME.bit_length() + 7) // 8
SHARE_BYTES = 4 + _ELEMENT_BYTES
"""Serialised share: 4-byte x coordinate, then the field element."""


@dataclass(frozen=True)
class Share:
    """One point (x, f(x)) of a sharing polynomial; ``y`` is kept out of ``repr``."""

    x: int
    y: int = field(repr=False)

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(_ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        return cls(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))


def random_element(draw: Callable[[int], bytes]) -> int:
    """A uniform field element by rejection sampling 521-bit strings."""
    excess_bits = 8 * _ELEMENT_BYTES - PRIME.bit_length()
    while True:
        candidate = int.from_bytes(draw(_ELEMENT_BYTES), "big") >> excess_bits
        if candidate < PRIME:
            return candidate


def split(secret: bytes, threshold: int, holders: Iterable[int], draw: Callable[[int], bytes]) -> dict[int, Share]:
    """Shares of ``secret`` for each holder id; any ``threshold`` of them reconstruct it."""
    holders = sorted(set(holders))
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} must lie in [1, {len(holders)}] (the number of holders)")
    if len(secret) > 32:
        raise ValueError("secrets are at most 32 bytes")
    coefficients = [int.from_bytes(secret, "big")] + [random_element(draw) for _ in range(threshold - 1)]
    return {holder: Share(holder + 1, _evaluate(coefficients, holder + 1)) for holder in holders}


def reconstruct(shares: Sequence[Share], threshold: int, secret_bytes: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares with distinct x (Lagrange interpolation at 0)."""
    points = {share.x: share.y for share in shares}
    if len(points) < threshold:
        raise ValueError(f"{len(points)} distinct shares, {threshold} needed")
    xs = sorted(points)[:threshold]
    secret = 0
    for x_i in xs:
        numerator, denominator = 1, 1
        for x_j in xs:
            if x_j != x_i:
                numerator = numerator * (-x_j) % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        secret = (secret + points[x_i] * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * secret_bytes):
        raise ValueError("shares are inconsistent: the interpolated value is not a secret of this size")
    return secret.to_bytes(secret_bytes, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):  # Horner
        value = (value * x + coefficient) % PRIME
    return value
