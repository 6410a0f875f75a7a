"""Collect the mia-strength runs (scenarios/studies/mia-strength.yaml) into curves.csv: one row per (run, attack),
with AUC, TPR at 1% and 0.1% FPR, and how many reference models each calibrated attack fine-tuned on how many
public records; prints the README's table (means over seeds).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-strength/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import column_mean, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")


def _references(config: dict, attack: str) -> tuple[int, int] | tuple[()]:
    """(references, records each) of the run's calibrated attack; () for an attack without references."""
    for entry in config.get("attacks", []):
        if entry.get("name") == attack == "mia-calibrated":
            params = entry.get("params", {})
            return params.get("references", 1), params.get("reference_examples", 32)
    return ()


def main(*runs: str) -> None:
    configs: dict[str, dict] = {}
    table: dict[tuple[str, str], dict] = {}
    for row in ok_rows(*runs):
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            configs[row["run_id"]] = config
        if row["metric"] in METRICS and row["attack"].startswith("mia-"):
            entry = table.setdefault((row["run_id"], row["attack"]),
                                     {"method": row["method"], "seed": row["seed"], "attack": row["attack"]})
            entry[row["metric"]] = round(row["value"], 4)
    rows = []
    for (run_id, attack), entry in table.items():
        refs = _references(configs.get(run_id, {}), attack)
        entry.update(references=refs[0] if refs else "", reference_examples=refs[1] if refs else "")
        rows.append(entry)
    rows.sort(key=lambda e: (e["method"], e["attack"], str(e["references"]), e["seed"]))
    columns = ["method", "attack", "references", "reference_examples", "seed", *METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["attack"], row["references"], row["reference_examples"]), []).append(row)
    print("| method | attack | references x records | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|")
    for (method, attack, refs, size), group in groups.items():
        setting = f"{refs} x {size}" if refs != "" else "base model"
        print(f"| {method} | {attack} | {setting} | {column_mean(group, 'mia.auc', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.01', 3)} | {column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
