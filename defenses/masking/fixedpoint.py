"""Fixed-point encoding of weighted float updates into residues modulo 2^k.

A client clips each coordinate to [-clip, clip], multiplies by its public weight w_u (its example
count over the round's total, so the weights sum to at most 1), scales and rounds to an integer and
reduces modulo 2^k. With rounding, |q_u| <= w_u * clip * scale + 1/2, so a sum over n clients stays
within clip * scale + n/2. The scale is the largest that keeps this below 2^(k-1), so the sum never
wraps and its sign survives:

    scale = (2^(k-1) - 1 - n) / clip

The decoded sum then differs from the clipped weighted sum by at most n / (2 * scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses.masking.prg import word_dtype

MIN_BITS, MAX_BITS = 8, 52
"""Above 52 bits float64 can no longer represent every scaled integer exactly."""


@dataclass(frozen=True)
class FixedPoint:
    bits: int
    clip: float
    num_clients: int

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must lie in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if not self.clip > 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        if 2 ** (self.bits - 1) - 1 - self.num_clients <= 0:
            raise ValueError(f"{self.bits} bits cannot hold the sum of {self.num_clients} clients")

    @property
    def modulus(self) -> int:
        return 2**self.bits

    @property
    def dtype(self) -> np.dtype:
        return word_dtype(self.bits)

    @property
    def scale(self) -> float:
        return (2 ** (self.bits - 1) - 1 - self.num_clients) / self.clip

    def error_bound(self, num_summed: int) -> float:
        """Largest rounding error of a decoded sum of ``num_summed`` inputs (clipping aside)."""
        return num_summed * 0.5 / self.scale

    def encode(self, update: np.ndarray, weight: float) -> np.ndarray:
        """Residues of round(w_u * clip(update) * scale) modulo 2^k."""
        if not 0 <= weight <= 1:
            raise ValueError(f"weights must lie in [0, 1], got {weight}")
        scaled = np.clip(update.astype(np.float64), -self.clip, self.clip) * (weight * self.scale)
        integers = np.rint(scaled).astype(np.int64)
        return (integers & (self.modulus - 1)).astype(self.dtype)

    def reduce(self, words: np.ndarray) -> np.ndarray:
        """Residues modulo 2^k of words that wrapped modulo 2^32 or 2^64."""
        return words & self.dtype.type(self.modulus - 1)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The float64 sum represented by residues ``total`` (the centred lift of each residue)."""
        signed = self.reduce(total).astype(np.int64)
        signed[signed >= self.modulus // 2] -= self.modulus
        return signed / self.scale
