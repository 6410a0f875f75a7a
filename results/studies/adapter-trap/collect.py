"""Collect the adapter-trap runs into curves.csv (one row per method, adapter size, batch size, seed).

Usage (from the repository root): python results/studies/adapter-trap/collect.py RUNS_DIR
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
                entry["size"] = (method.get("params") or {}).get("size", "") if isinstance(method, dict) else ""
                entry["batch_size"] = config.get("federation", {}).get("batch_size")
            if row["metric"] == "cost.wall_s":
                entry["wall_s"] = round(row["value"], 2)
            elif row["metric"] in METRICS:
                entry[row["metric"]] = round(row["value"], 4)
                entry[row["metric"] + ".floor"] = (row.get("extra") or {}).get("floor")
    columns = ["method", "size", "batch_size", "seed"] + [c for m in METRICS for c in (m, m + ".floor")] + ["wall_s"]
    # the sweep also runs each cell without the attack (its clean twin, for poison.utility_drop): no inversion rows
    rows = sorted((e for e in table.values() if "inversion.rouge1" in e), key=lambda e: (e["method"], int(e.get("size") or 0), e.get("batch_size") or 0, e["seed"]))
    out = Path(__file__).with_name("curves.csv")
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} ({len(rows)} runs)")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The README's table: per (size, batch size), the mean over seeds of each metric and of its floor."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((int(row.get("size") or 0), int(row.get("batch_size") or 0)), []).append(row)

    def mean(items: list[dict], key: str) -> str:
        values = [float(i[key]) for i in items if i.get(key) is not None]
        return f"{sum(values) / len(values):.2f}" if values else "-"

    print("| size | batch | seeds | ROUGE-1 | floor | exact | token F1 | floor | ROUGE-1 (text) | floor | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (size, batch), items in sorted(groups.items()):
        cells = [mean(items, k) for k in ("inversion.rouge1", "inversion.rouge1.floor", "inversion.exact",
                                          "inversion.token_f1", "inversion.token_f1.floor", "inversion.rouge1_text",
                                          "inversion.rouge1_text.floor", "wall_s")]
        print(f"| {size} | {batch} | {len(items)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
