"""Collect the mia-data runs (scenarios/studies/mia-data.yaml) into curves.csv: one row per (run, attack), with
the clinical task's class count and atypical share, the local steps, the run's accuracy, AUC and TPR at 1% and
0.1% FPR; prints the README's table (means over seeds, and the members found at 1% FPR per seed).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-data/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import attack_metrics, column_mean, grouped, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")


def main(*runs: str) -> None:
    rows_read = list(ok_rows(*runs))
    runs_seen: dict[str, dict] = {}
    for row in rows_read:
        seen = runs_seen.setdefault(row["run_id"], {})
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            task = config["task"]["params"]
            seen.update(classes=task["num_classes"], atypical=task["atypical_fraction"],
                        local_steps=config["federation"]["local_steps"])
        if row["attack"] == "none" and row["metric"] == "utility.accuracy":
            seen["accuracy"] = round(row["value"], 4)
        if row["metric"] == "mia.tpr@0.01":
            seen["members"] = (row.get("extra") or {}).get("members")
    table = attack_metrics(rows_read, METRICS)
    rows = [{**entry, **runs_seen.get(run_id, {})} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda e: (e["method"], e["attack"], e["classes"], e["atypical"], e["local_steps"], e["seed"]))
    columns = ["method", "attack", "classes", "atypical", "local_steps", "seed", "accuracy", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print("| method | attack | classes | atypical | local steps | accuracy | AUC | TPR@1%FPR | members found at 1% FPR "
          "(per seed) | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|---|---|---|---|")
    keys = ("method", "attack", "classes", "atypical", "local_steps")
    for (method, attack, classes, atypical, steps), group in grouped(rows, keys).items():
        found = ", ".join(str(round(e["mia.tpr@0.01"] * e["members"])) for e in group)
        print(f"| {method} | {attack} | {classes} | {atypical} | {steps} | {column_mean(group, 'accuracy')} | "
              f"{column_mean(group, 'mia.auc', 3)} | {column_mean(group, 'mia.tpr@0.01', 3)} | {found} | "
              f"{column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
