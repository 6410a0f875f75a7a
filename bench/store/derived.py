"""Metrics that compare two runs of a sweep, derived after the runs are stored.

``poison.utility_drop``: how much clean utility the attackers cost, against the same scenario without
attackers at the same seed (its *clean twin*). Randomness is keyed on the seed, so the twin trained on
the same data, initialisation and client sampling; the difference is the attackers' doing. The twin is
any stored run whose ``training_key`` equals this run's ``clean_training_key`` (the sweep runs one when
the grid has none). The drop is positive when the attack hurts: twin minus attacked for a
higher-is-better headline utility, attacked minus twin for perplexity.
"""

from __future__ import annotations

import math

from bench.api.vocabulary import UTILITY_HEADLINE, JsonObject, JsonValue, RunStatus
from bench.store.results import ResultStore

UTILITY_DROP = "poison.utility_drop"
# The leaderboard's headline utility (first present wins, higher is better), then perplexity for
# tasks that have nothing else.
HEADLINES = [(metric, True) for metric in UTILITY_HEADLINE] + [("utility.perplexity", False)]


def _runs(rows: list[JsonObject]) -> dict[tuple[str, int], list[JsonObject]]:
    runs: dict[tuple[str, int], list[JsonObject]] = {}
    for row in rows:
        runs.setdefault((row["scenario_hash"], int(row["seed"])), []).append(row)
    return runs


def _utility(run: list[JsonObject]) -> dict[str, float]:
    return {r["metric"]: float(r["value"]) for r in run
            if r["attack"] == "none" and r["metric"].startswith("utility.") and _finite(r["value"])}


def _finite(value: JsonValue) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _drop(attacked: dict[str, float], clean: dict[str, float]) -> tuple[str, float] | None:
    for metric, higher_is_better in HEADLINES:
        if metric in attacked and metric in clean:
            difference = clean[metric] - attacked[metric]
            return metric, difference if higher_is_better else -difference
    return None


def utility_drop_rows(rows: list[JsonObject]) -> list[JsonObject]:
    """One ``poison.utility_drop`` row per (attacked run, training attack) whose clean twin is stored."""
    runs = _runs([r for r in rows if r["metric"] != UTILITY_DROP])
    ok = {key: run for key, run in runs.items() if run[0].get("status") == RunStatus.OK}
    twins = {(run[0]["extra"].get("training_key"), seed): run for (_, seed), run in ok.items()
             if not run[0]["extra"].get("training_attacks")}
    derived = []
    for (_, seed), run in sorted(ok.items()):
        extra = run[0]["extra"]
        twin = twins.get((extra.get("clean_training_key"), seed)) if extra.get("training_attacks") else None
        found = _drop(_utility(run), _utility(twin)) if twin else None
        if found is None:
            continue
        metric, value = found
        template = next(r for r in run if r["attack"] == "none")
        for attack in extra["training_attacks"]:
            derived.append({**template, "attack": attack, "metric": UTILITY_DROP, "value": value, "ci_low": None,
                            "ci_high": None, "higher_is_better": False,
                            "extra": {**extra, "utility_metric": metric, "clean_run": twin[0]["run_id"]}})
    return derived


def add_utility_drops(store: ResultStore) -> int:
    """Recompute every ``poison.utility_drop`` row of the store (idempotent); returns how many there are."""
    derived = utility_drop_rows(store.rows())
    store.replace_metric(UTILITY_DROP, derived)
    return len(derived)
