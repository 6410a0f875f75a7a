"""What attacks output. ``bench.score`` turns each kind, plus ground truth, into metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MembershipScores:
    """Higher score = more likely a member; one score per candidate, in candidate order."""

    scores: torch.Tensor
    exposures: torch.Tensor | None = None
    """Canary exposure (log2 |space| - log2 rank), one per canary, when the attack measured it."""
    canary_losses: list[torch.Tensor] | None = None
    """Per canary: the loss of every candidate in its ``secret_space`` (the scorer ranks the true one)."""


@dataclass
class Reconstruction:
    """Token sequences the attacker recovered, per (round, client) it attacked."""

    sequences: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)


@dataclass
class PoisonOutcome:
    """Behaviour of the final model on triggered held-out inputs (predicted vs target labels)."""

    predicted: torch.Tensor
    target: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
