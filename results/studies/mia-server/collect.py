"""Collect the mia-server runs (scenarios/studies/mia-server.yaml) into curves.csv: one row per (run, attack), with
the attack's vantage (the server reading client updates, or anyone holding the final model), the run's utility,
AUC and TPR at 1% and 0.1% FPR; prints the README's table (means over seeds).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-server/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.api.registry import ATTACKS, load_plugins
from bench.tools.study_runs import attack_metrics, column_mean, grouped, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")
UTILITIES = ("utility.accuracy", "utility.rouge_l")


def main(*runs: str) -> None:
    load_plugins()
    rows_read = list(ok_rows(*runs))
    utility = {row["run_id"]: {"utility_metric": row["metric"], "utility": round(row["value"], 4)}
               for row in rows_read if row["attack"] == "none" and row["metric"] in UTILITIES}
    table = attack_metrics(rows_read, METRICS)
    for entry in table.values():
        entry["vantage"] = str(ATTACKS.get(entry["attack"]).vantage)  # declared by the attack, never read from its name
    rows = [{**entry, **utility.get(run_id, {})} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda e: (e["method"], e["vantage"], e["attack"], e["seed"]))
    columns = ["method", "vantage", "attack", "seed", "utility_metric", "utility", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print("| method | vantage | attack | utility | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|---|")
    for (method, vantage, attack), group in grouped(rows, ("method", "vantage", "attack")).items():
        print(f"| {method} | {vantage} | {attack} | {column_mean(group, 'utility')} | {column_mean(group, 'mia.auc', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.01', 3)} | {column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
