"""The base model's utility and the learning curve: utility before training and after each round.

A trained regime is only shown to be one beside the model it started from: ``base_metrics`` measures
the model before any training (the method's initial trainable state on the base model) and names its
utility ``utility.base.*``, recorded beside the trained ``utility.*``. ``LearningCurve`` is a round
observer of ``bench.engine.federation`` (asked for by ``federation.utility_curve``): it evaluates the global
model after every round and yields one ``utility.curve.*`` row per utility metric, whose value is the
last round's and whose extra holds the whole curve, ``[[round, value], ...]`` with round 0 the base
model, so the published rows carry it. Evaluation never trains and draws none of the randomness the
rounds use (each client job seeds its own generators), so a run with a curve trains exactly the
model a run without one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from bench.scoring.score import Metric

BASE, CURVE = "utility.base.", "utility.curve."


def renamed(metrics: list[Metric], prefix: str) -> list[Metric]:
    """``utility.x`` -> ``<prefix>x``."""
    return [replace(m, name=prefix + m.name.removeprefix("utility.")) for m in metrics]


def base_metrics(evaluate: Callable[[], list[Metric]]) -> list[Metric]:
    """The utility of the model before any training, as ``utility.base.*`` metrics."""
    return renamed(evaluate(), BASE)


@dataclass
class LearningCurve:
    """Utility after every round (a round observer); ``points[suffix] = [[round, value], ...]``."""

    evaluate: Callable[[], list[Metric]]
    set_state: Callable[[torch.Tensor], None]
    """Loads a flat global state into the model that ``evaluate`` measures."""
    base: list[Metric] = field(default_factory=list)
    """``utility.base.*`` metrics: round 0 (measured once, not again here)."""
    points: dict[str, list[list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.base:
            self.points.setdefault(m.name.removeprefix(BASE), []).append([0, m.value])

    def __call__(self, round_index: int, global_state: torch.Tensor) -> None:
        self.set_state(global_state)
        for m in self.evaluate():
            self.points.setdefault(m.name.removeprefix("utility."), []).append([round_index + 1, m.value])

    def metrics(self) -> list[Metric]:
        """One ``utility.curve.*`` metric per utility metric: the last round's value, the curve in extra."""
        return [Metric(CURVE + suffix, points[-1][1], higher_is_better=not suffix.endswith("perplexity"),
                       extra={"curve": points})
                for suffix, points in self.points.items() if points[-1][0] > 0]
