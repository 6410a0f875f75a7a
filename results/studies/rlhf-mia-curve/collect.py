"""Collect RLHF's undefended membership runs of scenarios/table4.yaml into curves.csv: one row per (run, attack),
with the attack's AUC (floor 0.5, its chance level), TPR at 1% FPR, the preference pairs each client trained
on (members), the reward model, and the run's held-out reward accuracy.

The rows come from two regimes of the same Table 4 row, both stored by `python -m bench run scenarios/table4.yaml`:
the one up to commit 483f49f (16 member pairs per client, a scalar-head reward model that stayed at chance)
and the one after it (260 member pairs per client, the likelihood reward model that learns). The curve shows
where membership inference works on RLHF (few pairs, each seen many times) and where it does not.

Usage (from the repository root): PYTHONPATH=. python results/studies/rlhf-mia-curve/collect.py RUNS_DIR [...]
(every folder's results.jsonl is read; a run id seen twice keeps its last reading).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import beating, column_mean, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01")
MARGIN = 0.05  # bench.reporting.verdict.MIN_ADVANTAGE


def main(*runs: str) -> None:
    configs: dict[str, dict] = {}  # a run's first row carries its scenario_config
    kept = []
    for row in ok_rows(*runs):
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            configs[row["run_id"]] = config
        if row["method"] == "rlhf" and row["defenses"] == "none":
            kept.append(row)
    table: dict[tuple[str, str], dict] = {}
    utility: dict[str, float] = {}
    for row in kept:
        config = configs.get(row["run_id"], {})
        if not config.get("file", "").endswith("table4.yaml"):
            continue
        if row["metric"] == "utility.reward_accuracy":
            utility[row["run_id"]] = round(row["value"], 4)
        if row["attack"] == "none" or row["metric"] not in METRICS:
            continue
        federation = config.get("federation", {})
        members = round(federation.get("examples_per_client", 0) * federation.get("member_fraction", 0.5))
        params = (config.get("method") or {}).get("params") or {}
        entry = table.setdefault((row["run_id"], row["attack"]), {
            "method": "rlhf", "attack": row["attack"], "seed": row["seed"], "member_pairs_per_client": members,
            "reward_model": params.get("reward_model", "head"), "run_id": row["run_id"]})
        entry[row["metric"]] = round(row["value"], 4)
        if row["metric"] == "mia.auc":
            entry["mia.auc.floor"] = (row.get("extra") or {}).get("floor", 0.5)
    rows = []
    for entry in table.values():
        entry["utility.reward_accuracy"] = utility.get(entry["run_id"])
        rows.append(entry)
    rows.sort(key=lambda e: (e["member_pairs_per_client"], e["attack"], e["seed"]))
    columns = ["method", "attack", "member_pairs_per_client", "reward_model", "seed", "mia.auc", "mia.auc.floor",
               "mia.tpr@0.01", "utility.reward_accuracy"]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["member_pairs_per_client"], row["reward_model"], row["attack"]), []).append(row)
    print("| member pairs per client | reward model | attack | AUC | TPR@1%FPR | reward accuracy | runs >= 0.5 + 0.05 |\n"
          "|---|---|---|---|---|---|---|")
    for (members, reward, attack), runs_ in groups.items():
        working = beating(runs_, "mia.auc", 0.5, MARGIN)
        print(f"| {members} | {reward} | {attack} | {column_mean(runs_, 'mia.auc', 3)} | {column_mean(runs_, 'mia.tpr@0.01', 3)} | "
              f"{column_mean(runs_, 'utility.reward_accuracy', 3)} | {working} of {len(runs_)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
