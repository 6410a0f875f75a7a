"""Collect the LoRA extraction-curve runs into curves.csv: one row per (run, attack), with the attack's
``extraction.rate`` and its floor (the base model's rate on the same probes), LoRA's rank, the local steps
and the learning rate.

Usage (from the repository root): PYTHONPATH=. python results/studies/extraction-curves/collect.py RUNS_DIR [...]
(every folder's results.jsonl is read; a run id seen twice keeps its last reading).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import ok_rows, write_curve

ATTACKS = ("pii-extract", "pii-reconstruct", "pii-infer")
METRIC = "extraction.rate"
MARGIN = 0.05  # bench.reporting.verdict.MIN_ADVANTAGE: a run "works" when it beats its floor by this much


def main(*runs: str) -> None:
    settings: dict[str, dict] = {}
    table: dict[tuple[str, str], dict] = {}
    for row in ok_rows(*runs):
        extra = row.get("extra") or {}
        config = extra.get("scenario_config") or {}
        if config:  # the run's first row keeps the resolved scenario
            federation = config.get("federation", {})
            settings[row["run_id"]] = {"method": row["method"], "seed": row["seed"],
                                       "rank": (config.get("method", {}).get("params") or {}).get("rank", ""),
                                       "local_steps": federation.get("local_steps"), "lr": federation.get("lr")}
        if row["metric"] == "utility.rouge_l":
            settings.setdefault(row["run_id"], {})["utility.rouge_l"] = round(row["value"], 4)
        if row["metric"] == METRIC and row["attack"] in ATTACKS:
            table[(row["run_id"], row["attack"])] = {"attack": row["attack"], METRIC: round(row["value"], 4),
                                                     f"{METRIC}.floor": extra.get("floor")}
    rows = [{**settings.get(run, {}), **entry} for (run, _), entry in table.items()]
    rows.sort(key=lambda e: (e["attack"], int(e.get("rank") or 0), e.get("local_steps") or 0, e.get("lr") or 0, e["seed"]))
    columns = ["method", "rank", "local_steps", "lr", "seed", "attack", METRIC, f"{METRIC}.floor", "utility.rouge_l"]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print(means_table(rows))


def means_table(rows: list[dict]) -> str:
    """The README's table: means over seeds per (attack, rank, local steps, lr), and the runs beating the floor."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["attack"], row.get("rank"), row.get("local_steps"), row.get("lr")), []).append(row)
    lines = ["| attack | rank | local steps | lr | rate | floor | ROUGE-L | runs >= floor + 0.05 |",
             "|---|---|---|---|---|---|---|---|"]
    for (attack, rank, steps, lr), runs in groups.items():
        def mean(column: str, runs: list[dict] = runs) -> str:
            values = [r[column] for r in runs if r.get(column) is not None]
            return f"{sum(values) / len(values):.2f}" if values else ""
        working = sum(1 for r in runs if r[METRIC] - (r[f"{METRIC}.floor"] or 0.0) >= MARGIN)
        lines.append(f"| {attack} | {rank} | {steps} | {lr} | {mean(METRIC)} | {mean(f'{METRIC}.floor')} | "
                     f"{mean('utility.rouge_l')} | {working} of {len(runs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(*sys.argv[1:])
