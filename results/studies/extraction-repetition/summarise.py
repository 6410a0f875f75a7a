"""Pool the study's runs: canary extraction rate per repetition count over seeds, Wilson 95% interval.

Usage: python results/studies/extraction-repetition/summarise.py RESULTS_DIR > summary.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.scoring.extraction import wilson

CANARIES_PER_LEVEL = 4  # the scenario's task.params.canaries


def main(directory: str) -> None:
    rates, floors, copies, seeds, walls = defaultdict(list), defaultdict(list), defaultdict(list), set(), []
    for line in (Path(directory) / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            if row["status"] != "ok":
                continue
            seeds.add(row["seed"])
            metric = row["metric"]
            if metric.startswith("extraction.canary_rate@r"):
                level = int(metric.rsplit("@r", 1)[1])
                rates[level].append(row["value"])
                floors[level].append(row["extra"].get("floor"))
            elif metric.startswith("extraction.canary_copies@r"):
                copies[int(metric.rsplit("@r", 1)[1])].append(row["value"])
            elif metric == "cost.wall_s":
                walls.append(row["value"])
    print(f"seeds: {sorted(seeds)}; run wall time {min(walls):.0f}-{max(walls):.0f} s (measured under load)\n")
    print("| inserted copies | trained copies (mean) | canaries | extracted | rate | Wilson 95% | base model (floor) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for level in sorted(rates):
        trials = CANARIES_PER_LEVEL * len(rates[level])
        hits = round(sum(rates[level]) * CANARIES_PER_LEVEL)
        low, high = wilson(hits, trials)
        floor = sum(floors[level]) / len(floors[level])
        trained = sum(copies[level]) / len(copies[level]) if copies[level] else float("nan")
        print(f"| {level} | {trained:.2f} | {trials} | {hits} | {hits / trials:.3f} | {low:.3f}-{high:.3f} | {floor:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
