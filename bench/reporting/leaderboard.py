"""The leaderboard: one wide row per (scenario, seed), built from the tidy results store.

Columns are fixed (``COLUMNS``, versioned by ``LEADERBOARD_SCHEMA``) so that downstream readers and
tests can rely on them whatever attacks a grid uses. Per attack family (``mia``, ``inversion``,
``poison``; Byzantine attacks count as ``poison``) the row carries the metrics of the family's
*strongest* attack in that run (highest headline metric: ``mia.auc``, ``inversion.recovered``,
``poison.asr``, ``extraction.rate``, above the level the attack reaches when it fails: its stored ``floor``,
else the metric's chance level) and names it in ``<family>_attack``: a defender must beat the best attack, not the
average one. ``utility`` is the task's headline utility (``utility_metric`` says which). Missing
values are empty cells. Everything here is a pure function of result rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path

from bench.api.metrics import spec_of
from bench.api.vocabulary import UTILITY_HEADLINE, JsonObject, JsonValue

LEADERBOARD_SCHEMA = 8

IDENTITY = ["leaderboard_schema", "scenario", "scenario_hash", "seed", "tier", "model", "task", "method", "defenses",
            "attacks", "status", "error"]
UTILITY = ["utility", "utility_metric", "utility_base", "utility_curve", "utility.accuracy", "utility.macro_f1", "utility.perplexity", "utility.rouge_l",
           "utility.reward_accuracy"]
FAMILY_METRICS = {
    "mia": ["mia.auc", "mia.auc_ci_low", "mia.auc_ci_high", "mia.tpr@0.01", "mia.tpr@0.001", "mia.balanced_acc",
            "mia.exposure"],
    "inversion": ["inversion.recovered", "inversion.rouge1", "inversion.rouge2", "inversion.exact", "inversion.token_f1"],
    "poison": ["poison.asr", "poison.asr_ci_low", "poison.asr_ci_high", "poison.utility_drop"],
    "extraction": ["extraction.rate", "extraction.rate_ci_low", "extraction.rate_ci_high", "extraction.base_rate",
                   "extraction.nonmember_rate"],
}
FAMILY_HEADLINE = {"mia": "mia.auc", "inversion": "inversion.recovered", "poison": "poison.asr",
                   "extraction": "extraction.rate"}
PRIVACY = ["dp.epsilon", "dp.delta", "dp.epsilon_lower", "privacy.egress_records", "privacy.egress_pii_fraction",
           "privacy.residual_pii_fraction"]
COST = ["cost.wall_s", "cost.client_s", "cost.server_s", "cost.bytes_up", "cost.bytes_down", "cost.expansion",
        "cost.peak_mem_mb"]
PROVENANCE = ["git_commit", "device"]


def _family_columns() -> list[str]:
    return [c for family, metrics in FAMILY_METRICS.items() for c in [f"{family}_attack", *metrics]]


COLUMNS = (IDENTITY + UTILITY + _family_columns() + PRIVACY + COST + PROVENANCE
           + ["attack_families", "attack_roles", "defense_families", "protocol", "regime"])
"""``attack_families``, ``attack_roles``: ``name=family`` (``name=role``) pairs joined by ``+``, as each attack
declared them (``Attack.family``, ``Attack.table_role``) and the runner stored them; an attack is never
classified by its name. ``defense_families``: ``name=family`` pairs as each defense declared it
(``Defense.family``); empty for a run stored before defenses declared theirs. ``protocol``: the round
protocol's label as the run stored it (``Protocol.label``: ``fedavg``, ``kd``, ``split (cut 1)``).
``regime``: the digest of the run's scenario without its defenses (``Scenario.regime``, as the runner stored
it: ``regime_of``): Table 4 pairs a defended run with the undefended run of the same regime and seed."""

DEFAULT_PROTOCOL = "fedavg"
"""What a run stored before protocols existed ran: parameter sharing."""
PARAMETER_SHARING = frozenset({"fedavg", "fedsgd"})
"""The protocol labels of parameter sharing, the protocols the paper's Table 4 is about. FedSGD is FedAvg
with one local step (McMahan et al. 2017), so Table 4 keeps their runs in one row per method: which of the
two a run used is the attack's threat model (gradient inversion reads one FedSGD step), not another system."""


def protocol_of(rows: list[JsonObject]) -> str:
    """The protocol label a run stored in its first row; else the protocol its stored scenario names (rows
    written before labels were stored); else ``fedavg`` (rows written before protocols existed)."""
    for row in rows:
        label = row_extra(row).get("protocol")
        if isinstance(label, str) and label:
            return label
    federation = stored_config(rows).get("federation")
    named = federation.get("protocol") if isinstance(federation, dict) else None
    return named if isinstance(named, str) and named else DEFAULT_PROTOCOL


def row_extra(row: JsonObject) -> JsonObject:
    """A row's ``extra`` as a dict: rows read back from results.csv keep it as JSON text."""
    extra = row.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            return {}
    return extra if isinstance(extra, dict) else {}


def declared_families(rows: list[JsonObject], kind: str = "family") -> dict[str, str]:
    """Attack name -> the family (``kind="role"``: the Table 4 role) it declared, as the runner stored it
    for one run's rows (the first row's ``attack_families``/``attack_roles``, each metric row's own)."""
    out: dict[str, str] = {}
    for row in rows:
        extra = row_extra(row)
        out.update(extra.get("attack_families" if kind == "family" else "attack_roles") or {})
        if extra.get(kind) and row.get("attack") not in (None, "none"):
            out[row["attack"]] = extra[kind]
    return out


def parse_families(value: JsonValue) -> dict[str, str]:
    """The leaderboard's ``attack_families`` (or ``attack_roles``) cell back to a mapping."""
    return dict(pair.split("=", 1) for pair in str(value or "").split("+") if "=" in pair)


def stored_config(rows: list[JsonObject]) -> JsonObject:
    """The resolved scenario a run stored in its first row's ``extra`` (empty for older runs)."""
    for row in rows:
        extra = row_extra(row)
        if isinstance(extra.get("scenario_config"), dict):
            return extra["scenario_config"]
    return {}


def regime_of(rows: list[JsonObject]) -> str | None:
    """The regime the run stored (``Scenario.regime``: its scenario without the defenses); None for a run
    stored before regimes were (those pair by seed alone, as every run did then)."""
    return next((str(row_extra(r)["regime"]) for r in rows if row_extra(r).get("regime")), None)


def stored_attacks(rows: list[JsonObject]) -> list[str]:
    return [a["name"] for a in stored_config(rows).get("attacks", []) if isinstance(a, dict) and a.get("name")]


def _number(value: JsonValue) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _group_runs(rows: Iterable[JsonObject]) -> dict[tuple[str, int], list[JsonObject]]:
    runs: dict[tuple[str, int], list[JsonObject]] = {}
    for row in rows:
        runs.setdefault((row["scenario_hash"], int(row["seed"])), []).append(row)
    return runs


def _strongest(rows: list[JsonObject], family: str, declared: dict[str, str]) -> JsonObject:
    """Metrics of the family's strongest attack in one run (with ``<family>_attack``), by declared family."""
    by_attack: dict[str, JsonObject] = {}
    headline = FAMILY_HEADLINE[family]
    advantage: dict[str, float] = {}
    for row in rows:
        if row["attack"] != "none" and declared.get(row["attack"]) == family:
            metrics = by_attack.setdefault(row["attack"], {})
            metrics[row["metric"]] = _number(row["value"])
            metrics[f"{row['metric']}_ci_low"] = _number(row.get("ci_low"))
            metrics[f"{row['metric']}_ci_high"] = _number(row.get("ci_high"))
            if row["metric"] == headline and metrics[headline] is not None:
                advantage[row["attack"]] = metrics[headline] - _failure_level(row, headline)
    if not by_attack:
        return {}
    best = max(sorted(by_attack), key=lambda a: advantage.get(a, -math.inf))
    return {f"{family}_attack": best, **{k: by_attack[best].get(k) for k in FAMILY_METRICS[family]}}


def _failure_level(row: JsonObject, headline: str) -> float:
    """What the attack scores when it fails: the ``floor`` its row stored, else the metric's chance level.
    Strongest = largest headline minus this: attacks of one family can fail at different levels (pii-infer
    picks among 10 candidates, so its base model already scores about 0.1; pii-extract's base scores 0),
    and a raw maximum would name an attack that did no better than its own floor."""
    floor = _number(row_extra(row).get("floor"))
    return floor if floor is not None else (spec_of(headline).chance or 0.0)


def leaderboard_row(rows: list[JsonObject], scenario_attacks: list[str] | None = None) -> JsonObject:
    """One wide row from the tidy rows of one run (scenario, seed)."""
    first = rows[0]
    plain = {r["metric"]: _number(r["value"]) for r in rows if r["attack"] == "none"}
    attacks = sorted({r["attack"] for r in rows if r["attack"] != "none"})
    attacks = attacks or sorted(scenario_attacks or stored_attacks(rows))
    out: JsonObject = {c: None for c in COLUMNS}
    out.update({k: first.get(k) for k in IDENTITY if k in first})
    out.update(leaderboard_schema=LEADERBOARD_SCHEMA, seed=int(first["seed"]), attacks="+".join(attacks) or "none")
    headline = next((m for m in UTILITY_HEADLINE if plain.get(m) is not None), None)
    out.update(utility=plain.get(headline) if headline else None, utility_metric=headline)
    out.update(_learning(rows, headline))
    out.update({k: plain.get(k) for k in UTILITY[4:] + PRIVACY + COST})
    declared = declared_families(rows)
    for family in FAMILY_METRICS:
        out.update(_strongest(rows, family, declared))
    out["attack_families"] = "+".join(f"{a}={f}" for a, f in sorted(declared.items())) or None
    out["attack_roles"] = "+".join(f"{a}={r}" for a, r in sorted(declared_families(rows, "role").items())) or None
    defenses = next((row_extra(r).get("defense_families") for r in rows if row_extra(r).get("defense_families")), None)
    out["defense_families"] = "+".join(f"{d}={f}" for d, f in sorted(defenses.items())) if isinstance(defenses, dict) else None
    out.update({k: first.get(k) for k in PROVENANCE})
    out["protocol"] = protocol_of(rows)
    out["regime"] = regime_of(rows)
    return out


def _learning(rows: list[JsonObject], headline: str | None) -> JsonObject:
    """The headline utility before training (``utility_base``) and per round (``utility_curve``, JSON
    ``[[round, value], ...]`` with round 0 the base model), from ``bench.engine.learning``'s rows."""
    if not headline:
        return {}
    suffix = headline.removeprefix("utility.")
    base = next((r for r in rows if r["attack"] == "none" and r["metric"] == f"utility.base.{suffix}"), None)
    curve = next((r for r in rows if r["attack"] == "none" and r["metric"] == f"utility.curve.{suffix}"), None)
    points = row_extra(curve).get("curve") if curve else None
    return {"utility_base": _number(base["value"]) if base else None,
            "utility_curve": json.dumps(points, separators=(",", ":")) if points else None}


def build(rows: Iterable[JsonObject], scenario_attacks: dict[str, list[str]] | None = None) -> list[JsonObject]:
    """The leaderboard rows, ordered by scenario then seed. ``scenario_attacks`` maps scenario_hash to
    the scenario's attack names (for runs that recorded no attack rows, e.g. incompatible ones)."""
    known = scenario_attacks or {}
    board = [leaderboard_row(run, known.get(key[0])) for key, run in _group_runs(rows).items()]
    return sorted(board, key=lambda r: (r["scenario"], r["seed"]))


def cell_labels(board: Iterable[JsonObject]) -> dict[str, str]:
    """scenario hash -> the ``scenario`` label of its lowest seed's run. A cell is keyed by its hash; when a file
    of another name runs more of its seeds (``scenarios/studies/real-model-fft-seeds.yaml``), its rows carry
    that file's label, and a report that grouped or labelled by name would split the cell or name it after
    whichever row came first."""
    lowest: dict[str, JsonObject] = {}
    for row in board:
        key = str(row["scenario_hash"])
        if key not in lowest or int(row["seed"]) < int(lowest[key]["seed"]):
            lowest[key] = row
    return {key: str(row["scenario"]) for key, row in lowest.items()}


def _cell(value: JsonValue) -> JsonValue:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(board: list[JsonObject], path: str | Path) -> Path:
    import io

    from bench.api.files import atomic_write as _atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in board:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    path = Path(path)
    _atomic_write(path, buffer.getvalue())
    return path


def read_csv(path: str | Path) -> list[JsonObject]:
    """Leaderboard rows back from CSV, numbers as floats (None for empty cells)."""
    text_columns = set(IDENTITY) | {"utility_metric", "utility_curve", *(f"{f}_attack" for f in FAMILY_METRICS)} \
        | set(PROVENANCE) | {"attack_families", "attack_roles", "defense_families", "protocol", "regime"}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (v if k in text_columns else _number(v)) for k, v in row.items()} for row in rows]
