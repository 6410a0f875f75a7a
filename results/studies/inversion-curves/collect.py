"""Collect the inversion-curves runs into curves.csv (one row per method, rank, batch size, seed).

Usage (from the repository root): python results/studies/inversion-curves/collect.py RUNS_DIR
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

METRICS = ("inversion.rouge1", "inversion.rouge1_text", "inversion.rouge2", "inversion.exact", "inversion.token_f1")


def main(runs: str) -> None:
    table: dict[tuple, dict] = {}
    for line in Path(runs, "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            if row.get("status") != "ok":
                continue
            config = (row.get("extra") or {}).get("scenario_config") or {}
            entry = table.setdefault(row["run_id"], {"seed": row["seed"], "method": row["method"]})
            if config:  # the run's first row keeps the resolved scenario
                method = config.get("method", {})
                entry["rank"] = (method.get("params") or {}).get("rank", "") if isinstance(method, dict) else ""
                entry["batch_size"] = config.get("federation", {}).get("batch_size")
            if row["metric"] == "cost.wall_s":
                entry["wall_s"] = round(row["value"], 2)
            elif row["metric"] in METRICS:
                entry[row["metric"]] = round(row["value"], 4)
                entry[row["metric"] + ".floor"] = (row.get("extra") or {}).get("floor")
    columns = ["method", "rank", "batch_size", "seed"] + [c for m in METRICS for c in (m, m + ".floor")] + ["wall_s"]
    rows = sorted(table.values(), key=lambda e: (e["method"], int(e.get("rank") or 0), e.get("batch_size") or 0, e["seed"]))
    out = Path(__file__).with_name("curves.csv")
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} ({len(rows)} runs)")


if __name__ == "__main__":
    main(sys.argv[1])
