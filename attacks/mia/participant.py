"""Participant-side membership inference from consecutive global models.

Melis, Song, De Cristofaro, Shmatikov 2019, "Exploiting Unintended Feature Leakage in Collaborative
Learning" (IEEE S&P) and Nasr et al. 2019 observe that a federated participant, who receives the
global model every round, sees the other clients' contributions as the difference between
consecutive global models. Here the participant scores each candidate by how much its loss drops
from one global model to the next: the training data of the clients in a round is what that
round's aggregate fits. Score = the largest drop over consecutive rounds (``reduce: max``) or the
total drop from the first to the final model (``reduce: sum``).

Departures: passive only (no active gradient-ascent probes as in Nasr et al.); the participant's own
contribution is not subtracted from the aggregate. The states are the rounds' broadcast
``global_before`` and the final model's state.

Access: loading a broadcast state into the model needs the weights, so the attack declares WEIGHTS
and runs every query through the tier's handle (``loss_at``), which a hosted provider refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from attacks.mia._common import membership_scores
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import UserError
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage

_REDUCERS = {"max": lambda drops: drops.max(0).values, "sum": lambda drops: drops.sum(0)}


@ATTACKS.register("mia-participant")
class ConsecutiveModelDrop(Attack):
    """Score = loss drop of each candidate between consecutive global models."""

    vantage = Vantage.PARTICIPANT
    family = AttackFamily.MIA
    access = frozenset({Access.WEIGHTS, Access.LOGITS})  # loads each round's global state
    needs = frozenset({"global_states"})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        reduce: Literal["max", "sum"] = doc(
            "combine per-round drops: the largest one, or their sum (first to final model)", "max"
        )

    def run(self, view: ThreatView, rng: torch.Generator):
        handle = view.final_model
        final = handle.get_flat()
        states = [r.global_before for r in view.rounds if r.global_before is not None] + [final]
        if len(states) < 2:
            raise UserError("mia-participant needs the global model of at least one round before the final one")
        losses = torch.stack([handle.loss_at(state, view.candidates) for state in states])
        return membership_scores(_REDUCERS[self.config.reduce](losses[:-1] - losses[1:]))
