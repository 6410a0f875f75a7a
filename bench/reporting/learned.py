"""Did each regime's model learn? Utility without a defense beside the base model's (issue 15 item 1).

A privacy-utility trade-off measured on a model that learned nothing says nothing about the trade-off, so
``table4.md`` prints, for every regime its cells rest on, the headline utility of the runs without a
defense next to the same metric of the base model before any training, the paired change over seeds with
its 95% t-interval (``bench.reporting.verdict.interval``), and the learning curve (mean over seeds per
round; round 0 is the base model) where the runs recorded one.

Which runs: status ok, no defense. A regime is the scenario's name (the part of the leaderboard's
``scenario`` before its matrix brackets); runs of one cell (one scenario hash) that files of other names ran
to more seeds (``scenarios/studies/real-model-fft-seeds.yaml``) take the name of the cell's lowest seed's run,
so a cell is one row however many files ran its seeds. A poisoning run's own utility is that of the attacked model;
its attacker-free twin's (same scenario and seed without attackers) is utility + ``poison.utility_drop``,
derived by the sweep in the same metric, so poisoning regimes read the twin's (one value per seed however
many attacks share it). Inversion regimes stay in although they train one FedSGD step on purpose (DAGER's
threat model: the server inverts the first update), so their ``no`` is by design; most of them record no
utility at all and have no row.

``learned``: ``yes`` when the interval of the change lies wholly above zero (every headline utility is
higher-is-better: ``bench.api.vocabulary.UTILITY_HEADLINE``), ``no`` when it does not (the change cannot be
told from zero, or it is negative), ``?`` with a single seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from bench.api.vocabulary import JsonObject, RunStatus
from bench.reporting.leaderboard import cell_labels
from bench.reporting.table4 import UTILITY_DROP, protocol_of, roles_of_run, row_label
from bench.reporting.verdict import interval

SECTION = "Utility without a defense, beside the base model"
POISONING_ROLES = frozenset({"backdoor", "byzantine"})


@dataclass(frozen=True)
class Learned:
    """One regime's row: the undefended runs of one (regime, tier, method, protocol, utility metric)."""

    regime: str
    tier: str
    row: str
    metric: str
    seeds: int
    base: float
    trained: float
    low: float
    high: float
    change: float
    change_low: float
    change_high: float
    curve: tuple[float, ...]
    twin: bool
    """True when the values are the attacker-free twins' (a poisoning regime)."""

    @property
    def learned(self) -> str:
        if self.seeds < 2:
            return "?"
        return "yes" if self.change_low > 0 else "no"


def regime_name(label: str) -> str:
    """A scenario label's regime: its name, before the matrix brackets."""
    return label.split("[", 1)[0]


def _clean_utility(row: JsonObject, roles: set[str]) -> tuple[float | None, bool]:
    """(the undefended model's utility without attackers, whether it is the twin's)."""
    value = row.get("utility")
    if not roles & POISONING_ROLES:
        return value, False
    drop = row.get(UTILITY_DROP)
    return (value + drop if value is not None and drop is not None else None), True


def _curve(rows: list[JsonObject]) -> tuple[float, ...]:
    """Mean over seeds per round, over the rounds every seed's curve has."""
    curves = [dict((int(r), float(v)) for r, v in json.loads(row["utility_curve"]))
              for row in rows if row.get("utility_curve")]
    if not curves:
        return ()
    rounds = sorted(set.intersection(*(set(c) for c in curves)))
    return tuple(sum(c[r] for c in curves) / len(curves) for r in rounds)


def build(board: Iterable[JsonObject]) -> list[Learned]:
    """One ``Learned`` per regime row of ``board`` (leaderboard rows)."""
    groups: dict[tuple[str, str, str, str], dict[int, tuple[JsonObject, float, bool]]] = {}
    board = list(board)
    labels = cell_labels(board)
    for row in board:
        roles = set(roles_of_run(row))
        if row.get("status") != RunStatus.OK or row.get("defenses") not in (None, "", "none"):
            continue
        value, twin = _clean_utility(row, roles)
        if value is None or row.get("utility_base") is None or not row.get("utility_metric"):
            continue
        key = (regime_name(labels[str(row["scenario_hash"])]), str(row["tier"]), row_label(str(row["method"]), protocol_of(row)),
               str(row["utility_metric"]))
        groups.setdefault(key, {}).setdefault(int(row["seed"]), (row, float(value), twin))
    return [_entry(key, list(by_seed.values())) for key, by_seed in sorted(groups.items())]


def _entry(key: tuple[str, str, str, str], runs: list[tuple[JsonObject, float, bool]]) -> Learned:
    regime, tier, row, metric = key
    trained = [value for _, value, _ in runs]
    bases = [float(r["utility_base"]) for r, _, _ in runs]
    change = interval([t - b for t, b in zip(trained, bases, strict=True)])
    return Learned(regime=regime, tier=tier, row=row, metric=metric, seeds=len(runs),
                   base=sum(bases) / len(bases), trained=sum(trained) / len(trained), low=min(trained),
                   high=max(trained), change=change.mean, change_low=change.low, change_high=change.high,
                   curve=_curve([r for r, _, _ in runs]), twin=any(t for _, _, t in runs))


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


LEGEND = """Each row: the runs without a defense of one regime (the scenario file whose cells it backs), the base
model's headline utility before training, the trained model's (mean, lowest and highest seed; † the
attacker-free twins of a poisoning regime), the paired change with its 95% t-interval over seeds, whether
it learned (the interval lies above zero), and the learning curve (mean over seeds,
round 0 = the base model) where the runs recorded one. Inversion regimes train one FedSGD step on
purpose (the server inverts the first update), so a "no" there is by design.
"""


def markdown(entries: list[Learned]) -> str:
    if not entries:
        return "No undefended run with a base-model utility in these runs.\n"
    header = ["regime", "tier", "method", "utility", "seeds", "base", "trained (lowest-highest)",
              "change [95% CI]", "learned", "per round"]
    lines = [LEGEND, "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        trained = f"{e.trained:.2f}{' †' if e.twin else ''} ({e.low:.2f}-{e.high:.2f})"
        change = f"{_signed(e.change)} [{_signed(e.change_low)}, {_signed(e.change_high)}]"
        learned = e.learned if e.learned != "no" else "**no**"
        curve = " ".join(f"{v:.2f}" for v in e.curve)
        lines.append("| " + " | ".join([e.regime, e.tier, e.row, e.metric.removeprefix("utility."), str(e.seeds),
                                         f"{e.base:.2f}", trained, change, learned, curve]) + " |")
    return "\n".join(lines) + "\n"
