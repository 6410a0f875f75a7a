"""Collect the mia-capacity runs (scenarios/studies/mia-capacity.yaml) into curves.csv: one row per (run, attack),
with the zoo model's width, the run's utility, AUC and TPR at 1% and 0.1% FPR; prints the README's table (means
over seeds).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-capacity/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import attack_metrics, column_mean, grouped, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")
UTILITIES = ("utility.accuracy", "utility.rouge_l")


def main(*runs: str) -> None:
    rows_read = list(ok_rows(*runs))
    runs_seen: dict[str, dict] = {}
    for row in rows_read:
        seen = runs_seen.setdefault(row["run_id"], {})
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            seen["hidden"] = config["model"]["params"]["hidden"]
        if row["attack"] == "none" and row["metric"] in UTILITIES:
            seen.update(utility_metric=row["metric"], utility=round(row["value"], 4))
    table = attack_metrics(rows_read, METRICS)
    rows = [{**entry, **runs_seen.get(run_id, {})} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda e: (e["method"], e["attack"], e["hidden"], e["seed"]))
    columns = ["method", "attack", "hidden", "seed", "utility_metric", "utility", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print("| method | attack | width | utility | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|---|")
    for (method, attack, hidden), group in grouped(rows, ("method", "attack", "hidden")).items():
        print(f"| {method} | {attack} | {hidden} | {column_mean(group, 'utility')} | {column_mean(group, 'mia.auc', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.01', 3)} | {column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
