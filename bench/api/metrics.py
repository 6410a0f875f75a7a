"""What an attack's headline metric declares about itself: its chance level, its direction, its scale.

Table 4 (``bench.reporting.table4``) measures an attack's *advantage* as its metric minus the level a failed
attack reaches. That level is the metric row's measured ``floor`` (in its ``extra``) when the run
stored one (e.g. the ROUGE-1 that guessing another record of the task reaches); otherwise it is the
chance level declared here. The report looks a metric up by name in this one table instead of
branching on prefixes, and it stays pure Python: ``report`` must not load the scoring stack (torch).

A scoring module that adds a headline metric declares it here with ``declare``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.api.config import doc
from bench.api.vocabulary import JsonObject


@dataclass(frozen=True)
class Metric:
    """One measured value; ``ci_low``/``ci_high`` hold a 95% interval when one was computed. Scorers make
    them (``bench.scoring``); a method's own utility (``Method.extra_utility``) too, hence here."""

    name: str
    value: float
    higher_is_better: bool = True
    ci_low: float | None = None
    ci_high: float | None = None
    extra: JsonObject = field(default_factory=dict, compare=False, hash=False)
    """Kept beside the value in the result row's ``extra`` (e.g. ``floor``: what a failed attack scores)."""


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """A metric's declared properties (for reports; scoring computes values, never reads these)."""

    name: str = doc("the metric's row name, e.g. ``mia.auc``")
    chance: float = doc("the value a failed attack (or a coin flip) scores when the row stores no measured floor")
    higher_is_better: bool = doc("true when a larger value means a stronger attack (or better utility)")
    scale: str = doc("what kind of number it is, in words: ``AUC`` or ``rate`` (a fraction in 0..1)")
    mde_goal: float = doc("the largest minimum detectable effect a Table 4 column of this metric may have "
                          "(issue 15: an AUC change of 0.05, a rate change of 0.1)")


_SPECS: dict[str, MetricSpec] = {}


def declare(spec: MetricSpec) -> MetricSpec:
    """Add ``spec``; a second declaration of one name raises (one source of truth per metric)."""
    if spec.name in _SPECS:
        raise ValueError(f"metric {spec.name!r} is already declared")
    _SPECS[spec.name] = spec
    return spec


def spec_of(name: str) -> MetricSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"metric {name!r} declares no chance level; declared: {', '.join(sorted(_SPECS))}") from None


declare(MetricSpec(name="mia.auc", chance=0.5, higher_is_better=True, scale="AUC", mde_goal=0.05))
declare(MetricSpec(name="inversion.rouge1", chance=0.0, higher_is_better=True, scale="rate", mde_goal=0.1))
declare(MetricSpec(name="inversion.recovered", chance=0.0, higher_is_better=True, scale="rate", mde_goal=0.1))
declare(MetricSpec(name="poison.asr", chance=0.0, higher_is_better=True, scale="rate", mde_goal=0.1))
declare(MetricSpec(name="poison.utility_drop", chance=0.0, higher_is_better=True, scale="rate", mde_goal=0.1))
declare(MetricSpec(name="extraction.rate", chance=0.0, higher_is_better=True, scale="rate", mde_goal=0.1))
