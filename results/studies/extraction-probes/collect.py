"""Collect the extraction-probes runs into curves.csv and print the README's table.

One row per (run, attack): method, mia_candidates, examples_per_client, local_steps, seed, the attack's
``extraction.rate``, its floor (the base model's rate on the same probes) and the PII items probed
(``trials``). The table reads each run as Table 4 does (``bench.reporting.table4``): the attack furthest
above its own floor gives the run's advantage; then the mean over seeds with its 95% t-interval
(``bench.reporting.verdict.interval``) and whether the interval clears the floor (Table 4's rule for an
attack that works without a defense).

Usage (from the repository root): PYTHONPATH=. python results/studies/extraction-probes/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.reporting.verdict import MIN_ADVANTAGE, interval
from bench.tools.study_runs import ok_rows, write_curve

ATTACKS = ("pii-extract", "pii-reconstruct", "pii-infer")
METRIC = "extraction.rate"
SETTINGS = ("method", "mia_candidates", "examples_per_client", "local_steps")


def main(*runs: str) -> None:
    settings: dict[str, dict] = {}
    table: dict[tuple[str, str], dict] = {}
    for row in ok_rows(*runs):
        extra = row.get("extra") or {}
        config = extra.get("scenario_config") or {}
        if config:  # the run's first row keeps the resolved scenario
            federation = config.get("federation", {})
            settings[row["run_id"]] = {"method": row["method"], "seed": row["seed"],
                                       **{k: federation.get(k) for k in SETTINGS[1:]}}
        if row["metric"] == METRIC and row["attack"] in ATTACKS:
            table[(row["run_id"], row["attack"])] = {"attack": row["attack"], METRIC: round(row["value"], 4),
                                                     f"{METRIC}.floor": extra.get("floor"), "trials": extra.get("trials")}
    rows = [{"run": run, **settings.get(run, {}), **entry} for (run, _), entry in table.items()]
    rows.sort(key=lambda e: (*(str(e.get(k)) for k in SETTINGS), e["seed"], e["attack"]))
    columns = [*SETTINGS, "seed", "attack", METRIC, f"{METRIC}.floor", "trials"]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print(means_table(rows))


def means_table(rows: list[dict]) -> str:
    """Per setting: PII items probed, the strongest attack's advantage over its floor (mean, 95% interval)."""
    best: dict[str, float] = {}
    trials: dict[str, float] = {}
    cell_of: dict[str, tuple] = {}
    for row in rows:
        advantage = row[METRIC] - (row[f"{METRIC}.floor"] or 0.0)
        best[row["run"]] = max(best.get(row["run"], -1.0), advantage)
        trials[row["run"]] = row["trials"] or 0.0
        cell_of[row["run"]] = tuple(row.get(k) for k in SETTINGS)
    lines = ["| method | mia_candidates | records a client | local steps | PII items probed | advantage | 95% interval | clears the floor |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in sorted(set(cell_of.values()), key=str):
        runs = [r for r in best if cell_of[r] == cell]
        found = interval([best[r] for r in runs])
        clears = found.low > 0 and found.mean >= MIN_ADVANTAGE
        items = sorted({int(trials[r]) for r in runs})
        lines.append(f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | {'-'.join(map(str, items))} | {found.mean:.3f} | "
                     f"[{found.low:+.3f}, {found.high:+.3f}] | {'yes' if clears else 'no'} ({len(runs)} seeds) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(*sys.argv[1:])
