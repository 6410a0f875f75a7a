"""``activation-noise``: Gaussian noise on the activations a split-learning client sends at the cut.

No formal privacy: the activations are not clipped, so their sensitivity to an input is unbounded and
no epsilon follows from the noise; nothing is accounted, and ``privacy()`` claims none. What it does is
measured: the reconstruction attack on the cut (``inversion-split``) against the noise std, and the
utility it costs. (A guarantee would need each activation row clipped to a norm and the noise
calibrated and composed over every local step, as ``dp-logits`` does for KD's logits.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot
from bench.api.protocol import Channel
from bench.api.registry import DEFENSES
from bench.api.vocabulary import DefenseFamily


@DEFENSES.register("activation-noise")
class ActivationNoise(Defense):
    """Add N(0, std^2) to every cut-layer activation before it is sent (no clipping, no guarantee)."""

    slot = DefenseSlot.CLIENT_UPDATE
    family = DefenseFamily.ACTIVATION_NOISE
    channels = frozenset({Channel.ACTIVATIONS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        std: float = doc("Standard deviation of the noise added to each activation value (>= 0).", 0.1)

        def __post_init__(self) -> None:
            if not self.std >= 0:
                raise ValueError("std must be >= 0")

    def on_channel(self, round_index: int, client: int, message: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.config.std == 0:
            return message
        local = rng if rng.device == message.device else torch.Generator(message.device).manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        return message + torch.randn(message.shape, generator=local, device=message.device, dtype=message.dtype) * self.config.std
