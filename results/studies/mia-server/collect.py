"""Collect the mia-server runs (scenarios/studies/mia-server.yaml) into curves.csv: one row per (run, attack), with
the attack's vantage (the server reading client updates, or anyone holding the final model), the run's utility,
AUC and TPR at 1% and 0.1% FPR; prints the README's table (means over seeds).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-server/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.api.registry import ATTACKS, load_plugins
from bench.tools.study_runs import column_mean, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")
UTILITIES = ("utility.accuracy", "utility.rouge_l")


def main(*runs: str) -> None:
    load_plugins()
    utility: dict[str, dict] = {}
    table: dict[tuple[str, str], dict] = {}
    for row in ok_rows(*runs):
        if row["attack"] == "none" and row["metric"] in UTILITIES:
            utility[row["run_id"]] = {"utility_metric": row["metric"], "utility": round(row["value"], 4)}
        if row["metric"] in METRICS and row["attack"] != "none":
            vantage = str(ATTACKS.get(row["attack"]).vantage)  # declared by the attack, never read from its name
            entry = table.setdefault((row["run_id"], row["attack"]), {"method": row["method"], "seed": row["seed"],
                                                                      "attack": row["attack"], "vantage": vantage})
            entry[row["metric"]] = round(row["value"], 4)
    rows = [{**entry, **utility.get(run_id, {})} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda e: (e["method"], e["vantage"], e["attack"], e["seed"]))
    columns = ["method", "vantage", "attack", "seed", "utility_metric", "utility", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["vantage"], row["attack"]), []).append(row)
    print("| method | vantage | attack | utility | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|---|")
    for (method, vantage, attack), group in groups.items():
        print(f"| {method} | {vantage} | {attack} | {column_mean(group, 'utility')} | {column_mean(group, 'mia.auc', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.01', 3)} | {column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
