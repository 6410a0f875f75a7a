"""The layout of a method's trainable state: names and shapes in flat order, nothing live.

Attacks and handles map flat vectors (updates, broadcast states) to named tensors with it. It holds
no module, parameter or method, so handing it to an attacker grants nothing beyond the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParameterLayout:
    names: tuple[str, ...]
    """Trainable parameter names, in the order of the flat state."""
    shapes: tuple[tuple[int, ...], ...]
    """Their shapes, in the same order."""

    @classmethod
    def of(cls, named: list[tuple[str, torch.Tensor]]) -> ParameterLayout:
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def num_trainable(self) -> int:
        return sum(self.sizes)

    def slices(self) -> dict[str, slice]:
        """Name -> its slice of the flat state."""
        out, offset = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = slice(offset, offset + size)
            offset += size
        return out

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (same shapes as the trainable parameters)."""
        return {name: flat[s].view(shape) for (name, s), shape in zip(self.slices().items(), self.shapes)}

    def flatten(self, named: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat vector of ``named`` tensors, in layout order (float32)."""
        return torch.cat([named[name].detach().reshape(-1).float() for name in self.names])
