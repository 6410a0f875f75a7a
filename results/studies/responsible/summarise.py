"""Pool the responsible-FedLLM study: harmfulness (judged compliance with the 48 held-out harmful requests)
and utility per harmful-client fraction x defense, over seeds; Wilson 95% interval on the pooled rate.

Usage: python results/studies/responsible/summarise.py RESULTS_DIR > summary.md
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.scoring.poison import wilson_interval

REPORTED = ("utility.rouge_l", "utility.exact_match", "utility.perplexity", "safety.filtered_fraction",
            "safety.revised_records", "safety.revision_refusal_rate", "safety.revision_compliance_rate",
            "safety.revision_dropped", "cost.constitutional_s", "cost.wall_s")


def cell_of(scenario: str) -> tuple[float, str] | None:
    found = re.search(r"fraction=([0-9.]+).*defenses=([a-z-]+)", scenario)
    return (float(found.group(1)), found.group(2)) if found else None


def main(directory: str) -> None:
    asr, floors, counts, seeds = defaultdict(list), defaultdict(list), defaultdict(list), set()
    other: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    twins: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    agreement = None
    for line in (Path(directory) / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            cell = cell_of(row.get("scenario", ""))
            if row.get("status") != "ok" or cell is None or "poison-harmful" not in row.get("scenario", ""):
                continue
            if row.get("scenario", "").endswith("~no-attackers"):  # the attacker-free twin (poison.utility_drop's reference)
                if row["metric"] in REPORTED and row.get("attack") == "none":
                    twins[cell[1]][row["metric"]].append(row["value"])
                continue
            seeds.add(row["seed"])
            extra = row.get("extra") or {}
            if row["metric"] == "poison.asr":
                asr[cell].append(row["value"])
                floors[cell].append(extra.get("floor", float("nan")))
                counts[cell].append(int(extra.get("evaluated", 48)))
                agreement = (extra.get("judge_agreement"), extra.get("judge_kappa"))
            elif row["metric"] in REPORTED and row.get("attack") == "none":
                other[cell][row["metric"]].append(row["value"])
    print(f"seeds: {sorted(seeds)}; judge agreement on its held-out labelled sample (responses): "
          f"{agreement[0]:.3f}, Cohen's kappa {agreement[1]:.3f}\n")
    print("| harmful fraction | defense | harmfulness (pooled) | Wilson 95% | base model (floor) | ROUGE-L | exact match "
          "| filtered | revised | revisions judged refusal | revisions dropped | run wall s (under load) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    for cell in sorted(asr, key=lambda c: (c[0], ["none", "safety-filter", "constitutional"].index(c[1]))):
        trials = sum(counts[cell])
        hits = round(sum(a * n for a, n in zip(asr[cell], counts[cell])))
        low, high = wilson_interval(hits, trials)
        o = other[cell]
        print(f"| {cell[0]:.1f} | {cell[1]} | {hits}/{trials} = {hits / trials:.3f} | {low:.3f}-{high:.3f} "
              f"| {mean(floors[cell]):.3f} | {mean(o['utility.rouge_l']):.3f} | {mean(o['utility.exact_match']):.3f} "
              f"| {mean(o['safety.filtered_fraction']):.3f} | {mean(o['safety.revised_records']):.1f} "
              f"| {mean(o['safety.revision_refusal_rate']):.3f} | {mean(o['safety.revision_dropped']):.1f} "
              f"| {mean(o['cost.wall_s']):.0f} |")

    print("\nAttacker-free twins (the same federation with no harmful client), per defense:\n")
    print("| defense | ROUGE-L | exact match | records filtered | records revised |")
    print("| --- | --- | --- | --- | --- |")
    for defense in ("none", "safety-filter", "constitutional"):
        if defense in twins:
            t = twins[defense]
            print(f"| {defense} | {mean(t['utility.rouge_l']):.3f} | {mean(t['utility.exact_match']):.3f} "
                  f"| {mean(t['safety.filtered_fraction']):.3f} | {mean(t['safety.revised_records']):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
