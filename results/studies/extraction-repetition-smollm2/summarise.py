"""Pool the study's runs: canary extraction rate per repetition count over seeds, Wilson 95% interval.

Usage: PYTHONPATH=. python results/studies/extraction-repetition-smollm2/summarise.py RESULTS_DIR > summary.md
The canaries per level come from each rate row's ``trials`` (stored by bench/scoring/extraction.py).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.scoring.extraction import wilson

OTHER = ("utility.perplexity", "utility.base.perplexity", "model.base_perplexity", "extraction.rate",
         "extraction.base_rate", "extraction.nonmember_rate", "extraction.canary_rate", "cost.client_s", "cost.wall_s")


def main(directory: str) -> None:
    hits, trials, floor_hits, copies = defaultdict(float), defaultdict(float), defaultdict(float), defaultdict(list)
    seeds, other = set(), defaultdict(list)
    for line in (Path(directory) / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            if row["status"] != "ok":
                continue
            seeds.add(row["seed"])
            metric, extra = row["metric"], row.get("extra") or {}
            if metric.startswith("extraction.canary_rate@r"):
                level, n = int(metric.rsplit("@r", 1)[1]), float(extra["trials"])
                hits[level] += round(row["value"] * n)
                trials[level] += n
                floor_hits[level] += round(extra.get("floor", 0.0) * n)
            elif metric.startswith("extraction.canary_copies@r"):
                copies[int(metric.rsplit("@r", 1)[1])].append(row["value"])
            elif metric in OTHER:
                other[metric].append((row["value"], row.get("ci_low"), row.get("ci_high"), extra.get("floor")))
    print(f"seeds: {sorted(seeds)}\n")
    print("| inserted copies | trained copies (mean) | canaries | extracted | rate | Wilson 95% | base model (floor) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for level in sorted(trials):
        n, k = trials[level], hits[level]
        low, high = wilson(k, n)
        trained = sum(copies[level]) / len(copies[level]) if copies[level] else float("nan")
        print(f"| {level} | {trained:.2f} | {n:.0f} | {k:.0f} | {k / n:.3f} | {low:.3f}-{high:.3f} | "
              f"{floor_hits[level] / n:.3f} |")
    print("\n| other metric | value(s) per seed (value [CI] floor) |\n| --- | --- |")
    for metric in OTHER:
        cells = []
        for value, low, high, floor in other.get(metric, []):
            text = f"{value:.3f}" if value is not None else "-"
            if low is not None and high is not None:
                text += f" [{low:.3f}-{high:.3f}]"
            if floor is not None:
                text += f" floor {floor:.3f}"
            cells.append(text)
        print(f"| {metric} | {'; '.join(cells) or '-'} |")


if __name__ == "__main__":
    main(sys.argv[1])
