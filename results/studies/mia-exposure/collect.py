"""Collect the mia-exposure runs (scenarios/studies/mia-exposure.yaml) into curves.csv: one row per (run, attack),
with the local steps per round, the passes over each member they make, the run's accuracy, AUC and TPR at 1% and
0.1% FPR; prints the README's table (means over seeds).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-exposure/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import attack_metrics, column_mean, grouped, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")


def _passes(federation: dict) -> float:
    """How many times each member is trained on: rounds x local steps x batch / members per client."""
    members = round(federation["examples_per_client"] * federation["member_fraction"])
    return federation["rounds"] * federation["local_steps"] * federation["batch_size"] / members


def main(*runs: str) -> None:
    rows_read = list(ok_rows(*runs))
    runs_seen: dict[str, dict] = {}
    for row in rows_read:
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            federation = config["federation"]
            runs_seen.setdefault(row["run_id"], {}).update(
                local_steps=federation["local_steps"], passes=round(_passes(federation), 2))
        if row["metric"] == "utility.accuracy":
            runs_seen.setdefault(row["run_id"], {})["accuracy"] = round(row["value"], 4)
    table = attack_metrics(rows_read, METRICS)
    rows = [{**entry, **runs_seen.get(run_id, {})} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda e: (e["method"], e["attack"], e["local_steps"], e["seed"]))
    columns = ["method", "attack", "local_steps", "passes", "seed", "accuracy", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print("| method | attack | local steps | passes per member | accuracy | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for (method, attack, steps, passes), group in grouped(
            rows, ("method", "attack", "local_steps", "passes")).items():
        print(f"| {method} | {attack} | {steps} | {passes:g} | {column_mean(group, 'accuracy')} | "
              f"{column_mean(group, 'mia.auc', 3)} | {column_mean(group, 'mia.tpr@0.01', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
