"""Byzantine update attacks: malicious clients replace their update with a crafted vector.

- ``byz-signflip``: send the negated (optionally scaled) honest update; the sign-flipping attack used
  by Damaskinos et al. 2018 and Karimireddy et al. 2021.
- ``byz-noise``: send Gaussian noise N(0, std^2 I), the "Gaussian" Byzantine worker of Blanchard et
  al. 2017 and Xie et al. 2018.
- ``byz-alie``: "A little is enough", Baruch et al. 2019 (NeurIPS): mean - z * std coordinate-wise,
  with z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - m, for n clients of which m are malicious.
  The formula gives z = 0 whenever s = n / 2 (n = 4, m = 1; n = 10, m = 1): the attackers would send the
  benign mean, which is no attack. Planning refuses that default with the numbers (set ``z`` by hand);
  at 8 clients with 2 attackers it gives z = Phi^-1(5 / 8) = 0.32. (Some re-implementations use
  Phi^-1((n - m - s) / (n - m)), which is negative at n = 4, m = 1; neither is positive there.)
- ``byz-ipm``: inner-product manipulation, Xie et al. 2020 (UAI): -epsilon * mean of the benign updates.

Knowledge and collusion: the attackers collude and, by default (``knowledge: benign``), know every
benign update of the round (the full-knowledge setting of Shejwalkar & Houmansadr 2021); with
``knowledge: own`` they only use the honest updates they computed on their own data (Baruch et al.'s
setting). Sign flip and noise need neither. The malicious clients still train honestly first, so their
own updates are honest ones. Standard deviations are population ones (ddof 0) so that a single
reference update gives std 0 instead of NaN.

Evaluation (all of them, and ``byz-minmax`` / ``byz-minsum``): untargeted. On classification tasks
success = error rate of the final model on clean auxiliary examples (``poison.asr``; its failure level
is the clean twin's error rate). On generative tasks (instruction tuning, RLHF) the attack emits no
``poison.asr``: its success metric is ``poison.utility_drop``, the headline utility (ROUGE-L, reward
accuracy) it costs against the clean twin, whose failure level is 0.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import torch

from attacks.poisoning._common import (
    ParticipantAttack,
    PoisonConfig,
    malicious_in_round,
    untargeted_outcome,
    utility_only_outcome,
)
from bench.api.config import doc
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import FederationSettings, ThreatView
from bench.api.vocabulary import AttackRole, TaskKind

Knowledge = Literal["benign", "own"]

_REFERENCES: dict[str, Callable[[list[int], list[int]], list[int]]] = {
    "benign": lambda benign, attackers: benign or attackers,
    "own": lambda benign, attackers: attackers,
}


def reference_updates(updates: dict[int, torch.Tensor], attackers: list[int], knowledge: str) -> torch.Tensor:
    """The updates the colluding attackers base their vector on, stacked (clients, parameters)."""
    benign = sorted(c for c in updates if c not in attackers)
    return torch.stack([updates[c] for c in _REFERENCES[knowledge](benign, attackers)])


# --- pure crafting rules ---------------------------------------------------------------------------
def sign_flip(own: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return -scale * own


def gaussian_updates(count: int, size: int, std: float, rng: torch.Generator) -> torch.Tensor:
    return torch.randn(count, size, generator=rng) * std


def alie_z(num_clients: int, num_malicious: int) -> float:
    """Baruch et al.'s z_max: the largest z for which s honest clients still sit farther from the mean."""
    supporters = math.floor(num_clients / 2 + 1) - num_malicious
    quantile = (num_clients - supporters) / num_clients
    return NormalDist().inv_cdf(min(max(quantile, 1e-12), 1 - 1e-12))


def alie(reference: torch.Tensor, z: float) -> torch.Tensor:
    return reference.mean(dim=0) - z * reference.std(dim=0, correction=0)


def inner_product_manipulation(reference: torch.Tensor, epsilon: float) -> torch.Tensor:
    return -epsilon * reference.mean(dim=0)


# --- registered attacks ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ByzantineConfig(PoisonConfig):
    knowledge: Knowledge = doc(
        "'benign': the colluding attackers read every benign update of the round; 'own': only their own honest ones.",
        "benign")


class ByzantineAttack(ParticipantAttack):
    """Shared round logic: the attackers' updates are replaced by ``craft``'s rows."""

    Config = ByzantineConfig
    role = AttackRole.BYZANTINE
    task_kinds = frozenset({TaskKind.CLASSIFICATION, TaskKind.INSTRUCTION, TaskKind.PREFERENCE})

    @abc.abstractmethod
    def craft(self, reference: torch.Tensor, own: torch.Tensor, num_clients: int, rng: torch.Generator) -> torch.Tensor:
        """One crafted update per attacker, shape (attackers, parameters)."""

    def poison_updates(
        self, round_index: int, updates: dict[int, torch.Tensor], malicious: list[int], rng: torch.Generator
    ) -> dict[int, torch.Tensor]:
        attackers = malicious_in_round(updates, malicious)
        if not attackers:
            return updates
        own = torch.stack([updates[c] for c in attackers])
        reference = reference_updates(updates, attackers, self.config.knowledge)
        crafted = self.craft(reference, own, len(updates), rng).to(device=own.device, dtype=own.dtype)
        out = dict(updates)
        for row, client in enumerate(attackers):
            out[client] = crafted[row].clone()  # shared vectors are expanded views; later hooks may write in place
        return out

    def run(self, view: ThreatView, rng: torch.Generator) -> PoisonOutcome:
        if not any("label" in example for example in view.auxiliary):  # generative: measured by the utility drop
            return utility_only_outcome()
        return untargeted_outcome(view, self.config.eval_examples, rng)


@ATTACKS.register("byz-signflip")
class SignFlip(ByzantineAttack):
    """Malicious clients send their honest update negated and scaled (sign flipping)."""

    @dataclass(frozen=True, kw_only=True)
    class Config(ByzantineConfig):
        scale: float = doc("The update sent is -scale times the honest one.", 1.0)

    def craft(self, reference, own, num_clients, rng):
        return sign_flip(own, self.config.scale)


@ATTACKS.register("byz-noise")
class GaussianNoise(ByzantineAttack):
    """Malicious clients send Gaussian noise instead of an update (Blanchard et al. 2017)."""

    @dataclass(frozen=True, kw_only=True)
    class Config(ByzantineConfig):
        std: float = doc("Standard deviation of each coordinate of the noise sent.", 1.0)

    def craft(self, reference, own, num_clients, rng):
        return gaussian_updates(own.shape[0], own.shape[1], self.config.std, rng)


@ATTACKS.register("byz-alie")
class ALittleIsEnough(ByzantineAttack):
    """A little is enough (Baruch et al. 2019): the mean minus z standard deviations, coordinate-wise."""

    @dataclass(frozen=True, kw_only=True)
    class Config(ByzantineConfig):
        z: float | None = doc("Deviation in standard deviations; unset = Baruch et al.'s z_max for this round.", None)

    def z_for(self, num_clients: int, num_malicious: int) -> float:
        return self.config.z if self.config.z is not None else alie_z(num_clients, num_malicious)

    def check_federation(self, federation: FederationSettings) -> str | None:
        n, m = federation.clients_per_round, self.planned_attackers(federation)
        if self.config.z is not None or m == 0 or alie_z(n, m) > 0:
            return None
        return (f"byz-alie's z_max (Baruch et al. 2019) is {alie_z(n, m):.2f} at {n} clients per round with {m} "
                f"attacker(s) (s = floor(n/2 + 1) - m = {math.floor(n / 2 + 1) - m}): the attackers would send the benign "
                f"mean; set z explicitly or use more clients per attacker")

    def craft(self, reference, own, num_clients, rng):
        vector = alie(reference, self.z_for(num_clients, own.shape[0]))
        return vector.expand(own.shape[0], -1)


@ATTACKS.register("byz-ipm")
class InnerProductManipulation(ByzantineAttack):
    """Inner-product manipulation (Xie et al. 2020): -epsilon x the mean of the benign updates."""

    @dataclass(frozen=True, kw_only=True)
    class Config(ByzantineConfig):
        epsilon: float = doc("The update sent is -epsilon times the benign mean (small fools Krum, large the median).", 0.5)

    def craft(self, reference, own, num_clients, rng):
        return inner_product_manipulation(reference, self.config.epsilon).expand(own.shape[0], -1)

