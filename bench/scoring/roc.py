"""ROC curves kept in the results store: small enough for one result row, faithful at low FPR.

A run stores, in the ``extra`` of each membership attack's ``mia.auc`` row, ``{"roc": {"fpr": [...],
"tpr": [...]}}``: at most ``MAX_POINTS`` points of the curve, rounded to ``DIGITS`` decimals. The points
kept are the curve's first ones on a geometric index grid (the low-FPR end, which a log-log plot
magnifies) together with a linear grid over the whole curve; the first and last points are always
kept. Pure Python (no torch), so that ``report`` reads them without importing the training stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.api.vocabulary import JsonValue

MAX_POINTS = 200
DIGITS = 5


def _kept_indices(n: int, budget: int) -> list[int]:
    """At most ``budget`` indices of ``range(n)``: half on a geometric grid, the rest on a linear one."""
    if n <= budget:
        return list(range(n))
    geometric = budget // 2
    ratio = (n - 1) ** (1 / (geometric - 1))
    chosen = {0, n - 1} | {round(ratio**i) for i in range(geometric)}
    linear = budget - len(chosen)
    chosen |= {round(i * (n - 1) / (linear - 1)) for i in range(linear)}
    return sorted(chosen)


def compact_roc(fpr: Sequence[float], tpr: Sequence[float], max_points: int = MAX_POINTS) -> dict[str, list[float]]:
    """At most ``max_points`` (fpr, tpr) points of a ROC curve, rounded, for a result row's ``extra``."""
    if len(fpr) != len(tpr):
        raise ValueError(f"{len(fpr)} FPR values for {len(tpr)} TPR values")
    keep = _kept_indices(len(fpr), max_points)
    return {"fpr": [round(float(fpr[i]), DIGITS) for i in keep], "tpr": [round(float(tpr[i]), DIGITS) for i in keep]}


def stored_roc(extra: JsonValue) -> tuple[list[float], list[float]] | None:
    """(fpr, tpr) from a row's ``extra`` (a dict, or its JSON text as in ``results.csv``), or None."""
    if isinstance(extra, str):
        import json

        try:
            extra = json.loads(extra)
        except ValueError:
            return None
    roc = extra.get("roc") if isinstance(extra, dict) else None
    if not isinstance(roc, dict) or not roc.get("fpr") or len(roc["fpr"]) != len(roc.get("tpr") or ()):
        return None
    return list(roc["fpr"]), list(roc["tpr"])


def trapezoid_auc(fpr: Sequence[float], tpr: Sequence[float]) -> float:
    """Area under a (possibly downsampled) ROC curve; a check that the stored curve matches ``mia.auc``."""
    return math.fsum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
