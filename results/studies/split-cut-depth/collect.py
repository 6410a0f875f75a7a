"""Collect the split-cut-depth runs into curves.csv: one row per run and inversion attack, with its ROUGE-1,
token F1 and exact-recovery rate, each metric's floor (what guessing the task's template or other records
scores), the run's bytes per round and client share of the blocks; then print the table the README shows
(means over seeds, with the lowest and highest seed in brackets).

Usage (from the repository root): PYTHONPATH=. python results/studies/split-cut-depth/collect.py RUNS_DIR [...]
(every folder's results.jsonl is read; a run id seen twice keeps its last reading).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import ok_rows, write_curve

ATTACKS = ("inversion-split", "inversion-split-replay", "inversion-split-learned")
METRICS = ("inversion.rouge1", "inversion.token_f1", "inversion.exact")
RUN_METRICS = ("cost.bytes_up", "cost.client_block_share", "utility.accuracy")


def main(*runs: str) -> None:
    per_run: dict[str, dict] = {}
    table: dict[tuple[str, str], dict] = {}
    for row in ok_rows(*runs):
        config = (row.get("extra") or {}).get("scenario_config") or {}
        run = per_run.setdefault(row["run_id"], {"seed": row["seed"]})
        if config:
            run["cut"] = config.get("federation", {}).get("cut_layer")
        if row["attack"] == "none" and row["metric"] in RUN_METRICS:
            run[row["metric"]] = round(row["value"], 4)
        if row["attack"] in ATTACKS and row["metric"] in METRICS:
            entry = table.setdefault((row["run_id"], row["attack"]), {"attack": row["attack"]})
            entry[row["metric"]] = round(row["value"], 4)
            entry[row["metric"] + ".floor"] = round((row.get("extra") or {}).get("floor", 0.0), 4)
    rows = [{**per_run[run_id], **entry} for (run_id, _), entry in table.items()]
    rows.sort(key=lambda r: (r.get("cut") or 0, ATTACKS.index(r["attack"]), r["seed"]))
    columns = ["cut", "attack", "seed", *[c for m in METRICS for c in (m, m + ".floor")], *RUN_METRICS]
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print("| cut | attack | seeds | ROUGE-1 [seed range] | floor | token F1 | floor | exact |\n|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("cut"), row["attack"]), []).append(row)
    for (cut, attack), group in groups.items():
        def stat(column: str, spread: bool = False, group: list[dict] = group) -> str:
            values = [r[column] for r in group if r.get(column) is not None]
            if not values:
                return ""
            text = f"{sum(values) / len(values):.3f}"
            return text + (f" [{min(values):.3f}, {max(values):.3f}]" if spread and len(values) > 1 else "")
        print(f"| {cut} | {attack} | {len(group)} | {stat('inversion.rouge1', True)} | {stat('inversion.rouge1.floor')} | "
              f"{stat('inversion.token_f1')} | {stat('inversion.token_f1.floor')} | {stat('inversion.exact', True)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
