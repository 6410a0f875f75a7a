"""Collect the mia-online runs (scenarios/studies/mia-online.yaml: LiRA's default central shadows, seed 0;
mia-online-federated.yaml: shadows trained as the target was; mia-online-normalised.yaml: the same, each model's
signals normalised; mia-online-offline.yaml: offline LiRA with 32 federated shadows of public records) into curves.csv: one row per (method, seed, attack, shadows) with AUC and TPR at 1% and
0.1% FPR. Prints the README's tables: means per (method, attack, shadows) over seeds, and per run normalised
LiRA beside raw LiRA (where it ran) and the stronger of Table 4's two attacks (Table 4 reports the attack with
the higher AUC). Table 4's attacks ran in every file on the same trained models: read once per (method, seed).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-online/collect.py RUNS_DIR [...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import column_mean, grouped, ok_rows, write_curve

METRICS = ("mia.auc", "mia.tpr@0.01", "mia.tpr@0.001")
TABLE4_ATTACKS = ("mia-reference", "mia-calibrated")
RAW, NORMALISED, OFFLINE = "federated x64", "federated x64, normalised", "federated x32, offline"


def _shadows(config: dict, attack: str) -> str:
    """How LiRA's shadows were trained and how many ('' for an attack without shadows)."""
    for entry in config.get("attacks", []):
        if entry.get("name") == attack == "mia-lira":
            params = entry.get("params", {})
            how = f"{'federated' if params.get('federated_shadows') else 'central'} x{params.get('shadows')}"
            return how + (", normalised" if params.get("normalise") else "") + ("" if params.get("online", True) else ", offline")
    return ""


def main(*runs: str) -> None:
    configs: dict[str, dict] = {}
    table: dict[tuple, dict] = {}
    for row in ok_rows(*runs):
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            configs[row["run_id"]] = config
        if row["metric"] in METRICS and row["attack"].startswith("mia-"):
            shadows = _shadows(configs.get(row["run_id"], {}), row["attack"])
            entry = table.setdefault((row["method"], row["seed"], row["attack"], shadows),
                                     {"method": row["method"], "seed": row["seed"], "attack": row["attack"], "shadows": shadows})
            entry[row["metric"]] = round(row["value"], 4)
    rows = sorted(table.values(), key=lambda e: (e["method"], e["attack"], e["shadows"], e["seed"]))
    write_curve(Path(__file__).with_name("curves.csv"), ["method", "attack", "shadows", "seed", *METRICS], rows)
    print("| method | attack | shadows | AUC | TPR@1%FPR | TPR@0.1%FPR | seeds |\n|---|---|---|---|---|---|---|")
    for (method, attack, shadows), group in grouped(rows, ["method", "attack", "shadows"]).items():
        print(f"| {method} | {attack} | {shadows} | {column_mean(group, 'mia.auc', 3)} | "
              f"{column_mean(group, 'mia.tpr@0.01', 3)} | {column_mean(group, 'mia.tpr@0.001', 3)} | {len(group)} |")
    print("\n| method | seed | Table 4's attack | AUC | TPR@1%FPR | raw online AUC | TPR@1%FPR | normalised online AUC | "
          "TPR@1%FPR | offline AUC | TPR@1%FPR |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for (method, seed), group in grouped(rows, ["method", "seed"]).items():
        lira = {r["shadows"]: r for r in group if r["attack"] == "mia-lira"}
        if NORMALISED not in lira:
            continue
        table4 = max((r for r in group if r["attack"] in TABLE4_ATTACKS), key=lambda r: r["mia.auc"])
        cells = [f"{lira[k]['mia.auc']:.3f} | {lira[k]['mia.tpr@0.01']:.3f}" if k in lira else " | " for k in (RAW, NORMALISED, OFFLINE)]
        print(f"| {method} | {seed} | {table4['attack']} | {table4['mia.auc']:.3f} | {table4['mia.tpr@0.01']:.3f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
