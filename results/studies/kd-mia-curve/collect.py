"""Collect the kd-mia-curve runs into curves.csv: one row per run, with mia-kd-logits' AUC (floor 0.5, its
chance level) and TPR at 1% FPR, the local steps and records per client, and the run's accuracy.

Usage (from the repository root): PYTHONPATH=. python results/studies/kd-mia-curve/collect.py RUNS_DIR [...]
(every folder's results.jsonl is read; a run id seen twice keeps its last reading).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import beating, column_mean, ok_rows, write_curve

ATTACK = "mia-kd-logits"
METRICS = ("mia.auc", "mia.tpr@0.01")
MARGIN = 0.05  # bench.reporting.verdict.MIN_ADVANTAGE


def main(*runs: str) -> None:
    table: dict[str, dict] = {}
    for row in ok_rows(*runs):
        entry = table.setdefault(row["run_id"], {"method": row["method"], "seed": row["seed"]})
        config = (row.get("extra") or {}).get("scenario_config") or {}
        if config:
            federation = config.get("federation", {})
            entry.update(local_steps=federation.get("local_steps"),
                         examples_per_client=federation.get("examples_per_client"))
        if row["metric"] == "utility.accuracy":
            entry["utility.accuracy"] = round(row["value"], 4)
        if row["attack"] == ATTACK and row["metric"] in METRICS:
            entry[row["metric"]] = round(row["value"], 4)
            if row["metric"] == "mia.auc":
                entry["mia.auc.floor"] = (row.get("extra") or {}).get("floor", 0.5)
    rows = sorted(table.values(), key=lambda e: (e.get("examples_per_client") or 0, e.get("local_steps") or 0, e["seed"]))
    columns = ["method", "local_steps", "examples_per_client", "seed", "mia.auc", "mia.auc.floor", "mia.tpr@0.01",
               "utility.accuracy"]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("examples_per_client"), row.get("local_steps")), []).append(row)
    print("| records per client | local steps | AUC | TPR@1%FPR | accuracy | runs >= 0.5 + 0.05 |\n|---|---|---|---|---|---|")
    for (records, steps), runs_ in groups.items():
        working = beating(runs_, "mia.auc", 0.5, MARGIN)
        print(f"| {records} | {steps} | {column_mean(runs_, 'mia.auc', 2)} | {column_mean(runs_, 'mia.tpr@0.01', 2)} | {column_mean(runs_, 'utility.accuracy', 2)} | "
              f"{working} of {len(runs_)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
