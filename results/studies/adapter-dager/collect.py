"""Collect the adapter-dager runs into curves.csv (one row per method, adapter size, batch size, seed).

Usage (from the repository root): PYTHONPATH=. python results/studies/adapter-dager/collect.py RUNS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools.study_runs import ok_rows, write_curve

METRICS = ("inversion.recovered", "inversion.rouge1", "inversion.rouge1_text", "inversion.exact",
           "inversion.token_f1")
MARGIN = 0.05  # bench.reporting.verdict.MIN_ADVANTAGE: a run "works" when it beats its floor by this much


def main(runs: str) -> None:
    table: dict[tuple, dict] = {}
    for row in ok_rows(runs):
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
    rows = sorted((e for e in table.values() if "inversion.rouge1" in e),
                  key=lambda e: (e["method"], int(e.get("size") or 0), e.get("batch_size") or 0, e["seed"]))
    write_curve(Path(__file__).with_name("curves.csv"), columns, rows)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The README's table: per (size, batch size), means over seeds, and the runs that beat the floor."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((int(row.get("size") or 0), int(row.get("batch_size") or 0)), []).append(row)

    def mean(items: list[dict], key: str) -> str:
        values = [float(i[key]) for i in items if i.get(key) is not None]
        return f"{sum(values) / len(values):.2f}" if values else "-"

    print("| size | batch | recovered | ROUGE-1 | floor | exact | ROUGE-1 (text) | floor | runs >= floor + 0.05 | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (size, batch), items in sorted(groups.items()):
        working = sum(1 for r in items if r["inversion.rouge1"] - (r["inversion.rouge1.floor"] or 0.0) >= MARGIN)
        cells = [mean(items, k) for k in ("inversion.recovered", "inversion.rouge1", "inversion.rouge1.floor",
                                          "inversion.exact", "inversion.rouge1_text", "inversion.rouge1_text.floor")]
        print(f"| {size} | {batch} | " + " | ".join(cells) + f" | {working} of {len(items)} | {mean(items, 'wall_s')} |")


if __name__ == "__main__":
    main(sys.argv[1])
