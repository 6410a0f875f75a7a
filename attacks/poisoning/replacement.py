"""Model replacement (``poison-replacement``): Bagdasaryan et al. 2020, "How to backdoor federated
learning" (AISTATS).

The attackers train on backdoored data (the ``poison-backdoor`` trigger and target) and scale their
update so that it survives averaging: X = gamma (L - G) + G with gamma = n / eta. Updates here are
already deltas L - G and FedAvg applies them with server rate 1, so each attacker multiplies its delta
by gamma = n / m, where n is the number of clients reporting this round and m the attackers among
them (the sum of the m boosted deltas then replaces the round's average). Knowledge: the attackers
know n (public round size) and collude only in splitting gamma among themselves; they do not read the
benign updates.

Departures: n counts clients, not their example weights (FedAvg weights by examples; an attacker can
state a typical count, so the two agree when clients hold equal shares). Half of each attacker's
examples stay clean by default (the paper mixes clean and backdoor data so that the replaced model
keeps its main-task accuracy); the trigger defaults are those of ``poison-backdoor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.poisoning.backdoor import Backdoor, BackdoorConfig
from bench.api.config import doc
from bench.api.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class ReplacementConfig(BackdoorConfig):
    poison_fraction: float = doc("Fraction of each malicious client's examples that are poisoned.", 0.5)
    boost: float | None = doc("Scale of each attacker's update; unset = clients reporting / attackers reporting.", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.boost is not None and self.boost <= 0:
            raise ValueError("boost must be positive")


@ATTACKS.register("poison-replacement")
class ModelReplacement(Backdoor):
    """Backdoor data plus an update boosted by n / m."""

    Config = ReplacementConfig

    def boost_factor(self, num_reporting: int, num_attackers: int) -> float:
        if self.config.boost is not None:
            return self.config.boost
        return num_reporting / num_attackers
