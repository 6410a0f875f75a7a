"""Pool the study's runs: canary extraction rate per repetition count over seeds, Wilson 95% intervals.

Usage: PYTHONPATH=. python results/studies/extraction-repetition-smollm2/summarise.py RESULTS_DIR > summary.md
Exact extraction: ``extraction.canary_rate@r<n>`` (the whole secret appears in the greedy completion);
approximate: ``extraction.canary_partial@r<n>`` (3 consecutive digits of the 6-digit secret appear).
The canaries per level come from each rate row's ``trials`` (stored by bench/scoring/extraction.py);
pooling sums hits and trials over seeds, and the base model's hits over seeds give the floor.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.scoring.extraction import wilson

KINDS = {"extraction.canary_rate@r": "exact", "extraction.canary_partial@r": "approximate"}
OTHER = ("extraction.canary_rate", "extraction.canary_partial", "extraction.rate", "extraction.base_rate",
         "extraction.nonmember_rate", "extraction.lcs", "extraction.rouge_l", "utility.perplexity",
         "utility.base.perplexity", "model.base_perplexity", "cost.client_s", "cost.wall_s", "cost.peak_mem_mb")


def main(directory: str) -> None:
    hits, trials, floor_hits = defaultdict(float), defaultdict(float), defaultdict(float)
    copies, per_seed = defaultdict(list), defaultdict(dict)
    seeds, other = set(), defaultdict(list)
    for line in (Path(directory) / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            if row["status"] != "ok":
                continue
            seeds.add(row["seed"])
            metric, extra = row["metric"], row.get("extra") or {}
            kind = next((k for p, k in KINDS.items() if metric.startswith(p)), None)
            if kind is not None:
                level, n = int(metric.rsplit("@r", 1)[1]), float(extra["trials"])
                hits[kind, level] += round(row["value"] * n)
                trials[kind, level] += n
                floor_hits[kind, level] += round(extra.get("floor", 0.0) * n)
                per_seed[kind, level][row["seed"]] = round(row["value"] * n)
            elif metric.startswith("extraction.canary_copies@r"):
                copies[int(metric.rsplit("@r", 1)[1])].append(row["value"])
            elif metric in OTHER:
                other[metric].append((row["seed"], row["value"], row.get("ci_low"), row.get("ci_high"), extra.get("floor")))
    print(f"seeds: {sorted(seeds)}\n")
    intervals = {}
    for kind in KINDS.values():
        print(f"**{kind} extraction** (pooled over seeds; Wilson 95%)\n")
        print("| inserted copies | trained copies (mean) | canaries | extracted (per seed) | rate | Wilson 95% | "
              "base model (floor) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for level in sorted(lv for k, lv in trials if k == kind):
            n, k = trials[kind, level], hits[kind, level]
            low, high = wilson(k, n)
            intervals[kind, level] = (low, high)
            trained = sum(copies[level]) / len(copies[level]) if copies[level] else float("nan")
            split = "+".join(str(per_seed[kind, level][s]) for s in sorted(per_seed[kind, level]))
            print(f"| {level} | {trained:.2f} | {n:.0f} | {k:.0f} ({split}) | {k / n:.3f} | {low:.3f}-{high:.3f} | "
                  f"{floor_hits[kind, level] / n:.3f} |")
        levels = sorted(lv for k, lv in trials if k == kind)
        if len(levels) >= 2:
            lowest, highest = intervals[kind, levels[0]], intervals[kind, levels[-1]]
            apart = lowest[1] < highest[0]
            print(f"\nlowest ({levels[0]}) vs highest ({levels[-1]}) repetition count: intervals "
                  f"{'do not overlap' if apart else 'OVERLAP'} ({lowest[0]:.3f}-{lowest[1]:.3f} vs "
                  f"{highest[0]:.3f}-{highest[1]:.3f})\n")
    print("| other metric | value per seed (seed: value [CI] floor) |\n| --- | --- |")
    for metric in OTHER:
        cells = []
        for seed, value, low, high, floor in sorted(other.get(metric, []), key=lambda t: t[0]):
            text = f"{seed}: {value:.3f}" if value is not None else f"{seed}: -"
            if low is not None and high is not None:
                text += f" [{low:.3f}-{high:.3f}]"
            if floor is not None:
                text += f" floor {floor:.3f}"
            cells.append(text)
        print(f"| {metric} | {'; '.join(cells) or '-'} |")


if __name__ == "__main__":
    main(sys.argv[1])
