"""What a tier grants and a component needs: the ``Access`` capabilities, and the two refusals built on them.

Table 1 (``bench.reporting.table1``) and the planner (``bench.engine.runner``) ask the same question,
so it lives here, below both: reporting computes the table without importing the engine.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # both import this module; named in annotations only
    from bench.api.attack import Attack
    from bench.api.method import Method


class Access(enum.Enum):
    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    LOGITS = "logits"
    TEXT = "text"
    PROVIDER_TUNING = "provider-tuning"
    TRAINING_DATA = "training-data"


class Granting(Protocol):
    """What the access checks read of a tier (``bench.world.tiers.Tier`` has it)."""

    @property
    def name(self) -> str: ...
    def missing(self, needs: frozenset[Access]) -> list[Access]: ...


def availability(tier: Granting, method: Method) -> str | None:
    """Why ``tier`` does not allow ``method`` (Table 1), or None."""
    missing = tier.missing(method.needs)
    if missing:
        return f"{method.name} needs {', '.join(a.value for a in missing)} access, which {tier.name} does not grant"
    return None


def access_refusal(tier: Granting, attack: Attack) -> str | None:
    """Why ``tier`` rules out ``attack`` (it needs access the tier does not grant), or None."""
    missing = tier.missing(attack.access)
    if missing:
        return f"{attack.name} needs {', '.join(a.value for a in missing)} access, which {tier.name} does not grant"
    return None
