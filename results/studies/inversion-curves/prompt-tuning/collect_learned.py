"""Collect the learned-inversion runs on prompt tuning (learned.yaml) into learned.csv, one row per run.

Usage (from the repository root): python results/studies/inversion-curves/prompt-tuning/collect_learned.py RUNS_DIR
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

METRICS = ("inversion.recovered", "inversion.rouge1", "inversion.rouge1_text", "inversion.exact")


def main(runs: str) -> None:
    table: dict[str, dict] = {}
    for line in Path(runs, "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            if row.get("status") != "ok":
                continue
            entry = table.setdefault(row["run_id"], {"seed": row["seed"], "wall_s": round(row["wall_s"], 1)})
            config = (row.get("extra") or {}).get("scenario_config") or {}
            if config:  # the run's first row keeps the resolved scenario
                entry["batch_size"] = config["federation"]["batch_size"]
                entry["epochs"] = next(a["params"].get("epochs") for a in config["attacks"] if a["name"] == "inversion-learned")
            if row["metric"] in METRICS:
                entry[row["metric"]] = round(row["value"], 4)
                entry[row["metric"] + ".floor"] = (row.get("extra") or {}).get("floor")
    columns = ["batch_size", "epochs", "seed"] + [c for m in METRICS for c in (m, m + ".floor")] + ["wall_s"]
    rows = sorted(table.values(), key=lambda e: (e["batch_size"], e["epochs"], e["seed"]))
    with Path(__file__).with_name("learned.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for (batch, epochs) in sorted({(e["batch_size"], e["epochs"]) for e in rows}):
        group = [e for e in rows if (e["batch_size"], e["epochs"]) == (batch, epochs)]
        print(f"batch {batch}, {epochs} epochs, {len(group)} seeds: recovered {_mean(group, 'inversion.recovered'):.2f} "
              f"(per seed {', '.join(str(e['inversion.recovered']) for e in group)}), ROUGE-1 {_mean(group, 'inversion.rouge1'):.2f} "
              f"against a floor of {_mean(group, 'inversion.rouge1.floor'):.2f}, {_mean(group, 'wall_s'):.0f} s a run")


def _mean(group: list[dict], key: str) -> float:
    return sum(e[key] for e in group) / len(group)


if __name__ == "__main__":
    main(*sys.argv[1:])
