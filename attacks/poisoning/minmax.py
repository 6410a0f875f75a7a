"""Min-max and min-sum attacks (``byz-minmax``, ``byz-minsum``): Shejwalkar & Houmansadr 2021,
"Manipulating the Byzantine: optimizing model poisoning attacks and defenses for federated learning"
(NDSS), the aggregation-rule-agnostic attacks.

The malicious update is mean + gamma * p, with p a perturbation direction (inverse unit vector
-mean/|mean|, inverse standard deviation -std, or inverse sign -sign(mean)) and gamma the largest value
for which the malicious update stays as close to the benign ones as they are to each other:
- min-max: max_i |mal - g_i|^2 <= max_{i,j} |g_i - g_j|^2
- min-sum: sum_i |mal - g_i|^2 <= max_i sum_j |g_i - g_j|^2
All attackers send the same vector.

Knowledge and collusion: colluding attackers who know every benign update of the round (the paper's
full-knowledge setting; ``knowledge: own`` uses only their own honest updates, the partial-knowledge
setting).

Departure: the paper's binary search starts from a fixed gamma_init; here it bisects [0, gamma_max]
with gamma_max = (sqrt(threshold) + max_i |mean - g_i|) / |p|, beyond which every distance exceeds the
threshold. Both objectives are convex in gamma and feasible at 0, so the feasible set is [0, gamma*]
and bisection finds gamma*. Distances are expanded as |mean - g_i|^2 + 2 gamma p.(mean - g_i) +
gamma^2 |p|^2, so each search step costs O(clients), not O(clients x parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from attacks.poisoning.byzantine import ByzantineAttack, ByzantineConfig
from bench.api.config import doc
from bench.api.registry import ATTACKS
from bench.api.updates import pairwise_sq_distances

Direction = Literal["unit-vector", "std", "sign"]

DIRECTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "unit-vector": lambda reference: -reference.mean(0) / torch.linalg.vector_norm(reference.mean(0)).clamp(min=1e-12),
    "std": lambda reference: -reference.std(dim=0, correction=0),
    "sign": lambda reference: -torch.sign(reference.mean(0)),
}


@dataclass(frozen=True)
class DistanceTerms:
    """|mean + gamma p - g_i|^2 = a_i + 2 gamma b_i + gamma^2 c, in float64."""

    a: torch.Tensor
    b: torch.Tensor
    c: float

    def squared(self, gamma: float) -> torch.Tensor:
        return self.a + 2 * gamma * self.b + gamma * gamma * self.c


def distance_terms(reference: torch.Tensor, direction: torch.Tensor) -> DistanceTerms:
    mean = reference.mean(0)
    offsets = mean[None] - reference  # (k, P): small k, kept for exactness
    a = torch.linalg.vector_norm(offsets, dim=1).double() ** 2
    b = (offsets @ direction).double()
    return DistanceTerms(a=a, b=b, c=float(torch.linalg.vector_norm(direction).double() ** 2))


CRITERIA: dict[str, tuple[Callable[[torch.Tensor], float], Callable[[torch.Tensor], float]]] = {
    # name: (threshold from benign pairwise squared distances, objective from malicious-to-benign ones)
    "min-max": (lambda pairwise: float(pairwise.max()), lambda squared: float(squared.max())),
    "min-sum": (lambda pairwise: float(pairwise.sum(dim=1).max()), lambda squared: float(squared.sum())),
}


def optimal_gamma(reference: torch.Tensor, direction: torch.Tensor, criterion: str, steps: int = 60) -> float:
    """The largest gamma meeting ``criterion`` for mean + gamma * direction (bisection)."""
    threshold_of, objective_of = CRITERIA[criterion]
    threshold = threshold_of(pairwise_sq_distances(reference).double())
    terms = distance_terms(reference, direction)
    if terms.c <= 0:
        return 0.0
    feasible, upper = 0.0, (threshold ** 0.5 + float(terms.a.max()) ** 0.5) / terms.c ** 0.5
    for _ in range(steps):
        middle = (feasible + upper) / 2
        if objective_of(terms.squared(middle)) <= threshold:
            feasible = middle
        else:
            upper = middle
    return feasible


def optimized_update(reference: torch.Tensor, direction_name: str, criterion: str, steps: int = 60) -> torch.Tensor:
    direction = DIRECTIONS[direction_name](reference)
    return reference.mean(0) + optimal_gamma(reference, direction, criterion, steps) * direction


@dataclass(frozen=True, kw_only=True)
class OptimizedConfig(ByzantineConfig):
    direction: Direction = doc("Perturbation direction: unit-vector (-mean/|mean|), std (-std) or sign (-sign(mean)).", "std")
    search_steps: int = doc("Bisection steps for gamma (each halves the interval).", 60)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search_steps < 1:
            raise ValueError("search_steps must be >= 1")


class OptimizedPerturbation(ByzantineAttack):
    criterion: str

    Config = OptimizedConfig

    def craft(self, reference, own, num_clients, rng):
        vector = optimized_update(reference, self.config.direction, self.criterion, self.config.search_steps)
        return vector.expand(own.shape[0], -1)


@ATTACKS.register("byz-minmax")
class MinMax(OptimizedPerturbation):
    """Malicious update no farther from any benign update than the benign ones are from each other."""

    criterion = "min-max"


@ATTACKS.register("byz-minsum")
class MinSum(OptimizedPerturbation):
    """Malicious update whose summed squared distance stays within the benign maximum."""

    criterion = "min-sum"
