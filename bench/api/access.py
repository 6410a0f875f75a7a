"""What a tier grants and a component needs: the ``Access`` capabilities, and the two refusals built on them.

Table 1 (``bench.reporting.table1``) and the planner (``bench.engine.runner``) ask the same question,
so it lives here, below both: reporting computes the table without importing the engine.
"""

from __future__ import annotations

import enum
from typing import Any


class Access(enum.Enum):
    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    LOGITS = "logits"
    TEXT = "text"
    PROVIDER_TUNING = "provider-tuning"
    TRAINING_DATA = "training-data"


def availability(tier: Any, method: Any) -> str | None:
    """Why ``tier`` does not allow ``method`` (Table 1), or None."""
    missing = tier.missing(method.needs)
    if missing:
        return f"{method.name} needs {', '.join(a.value for a in missing)} access, which {tier.name} does not grant"
    return None


def access_refusal(tier: Any, attack: Any) -> str | None:
    """Why ``tier`` rules out ``attack`` (it needs access the tier does not grant), or None."""
    missing = tier.missing(attack.access)
    if missing:
        return f"{attack.name} needs {', '.join(a.value for a in missing)} access, which {tier.name} does not grant"
    return None
