"""Record-level DP-SGD's local step stated as data, so that many clients can take it together.

A defense that replaces local training with DP-SGD (``dp-local``) trains one client at a time through
Opacus. ``Defense.private_steps`` lets it describe its step instead (Poisson rate, clip norm, noise
multiplier); ``bench.client.private_group`` then trains a round's clients side by side and reproduces,
client by client, what the one-at-a-time trainer draws and computes (Abadi et al. 2016, as Opacus 1.6's
``DPOptimizer`` implements it):

- each step's batch holds each of the client's ``n`` records independently with probability ``q``
  (``poisson_batch``, from the client's own generator);
- each record's gradient is scaled by ``min(1, C / (norm + 1e-6))`` and the scaled gradients are summed;
- Gaussian noise of std ``noise_multiplier * C`` is added to the sum, one draw per trainable tensor in
  order, from the same generator that drew the batch (``generator_on``);
- the noisy sum is divided by the expected batch size ``q * n`` and the client's optimizer steps.

The privacy accounting is the defense's: ``finished`` is called with the steps a client took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

CLIP_EPSILON = 1e-6
"""Added to a per-example norm before dividing (Opacus' ``clip_and_accumulate``)."""


@dataclass(frozen=True, kw_only=True)
class PrivateSteps:
    """One client's DP-SGD step, as the batched trainer runs it (see the module's docstring)."""

    sample_rate: float
    """Poisson rate q: each record joins a step's batch independently with this probability."""
    max_grad_norm: float
    """Per-example clip norm C."""
    noise_multiplier: float
    """Noise std over C; 0 draws no noise (as Opacus)."""
    finished: Callable[[int], None]
    """Called once the client has trained, with the steps it took (the defense's ledger records them)."""


def poisson_batch(n: int, sample_rate: float, rng: torch.Generator) -> list[int]:
    """Each of ``n`` examples independently with probability ``sample_rate`` (Poisson sampling)."""
    return torch.nonzero(torch.rand(n, generator=rng) < sample_rate).flatten().tolist()


def generator_on(device: torch.device | str, rng: torch.Generator) -> torch.Generator:
    """``rng`` itself when it lives on ``device``, else a generator there seeded from ``rng``
    (torch samples on a device only from a generator of that device type)."""
    if torch.device(device).type == rng.device.type:
        return rng
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    return torch.Generator(device=device).manual_seed(seed)
