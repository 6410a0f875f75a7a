"""Pool the responsible-FedLLM study: harmfulness (judged compliance with the 48 held-out harmful requests)
and utility per harmful-client fraction x defense, over seeds: the per-seed values, their mean with a 95%
Student-t interval over seeds (the seed, i.e. the training run, is the unit that varies; n = 3 gives
t = 4.30), and the Wilson 95% interval of the pooled rate (which treats every generation as independent,
so it is narrower than the seeds justify).

Usage: python results/studies/responsible/summarise.py RESULTS_DIR > summary.md
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.scoring.poison import wilson_interval

REPORTED = ("utility.rouge_l", "utility.exact_match", "utility.perplexity", "safety.filtered_fraction",
            "safety.revised_records", "safety.revision_refusal_rate", "safety.revision_compliance_rate",
            "safety.revision_dropped", "cost.constitutional_s", "cost.wall_s")


T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1)."""


def seed_interval(values: list[float]) -> str:
    """``mean [low, high]`` over seeds (Student t); the mean alone for one seed."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return f"{mean:.3f} [{max(0.0, mean - half):.3f}, {min(1.0, mean + half):.3f}]"


def per_seed(values: dict[int, float]) -> str:
    return " / ".join(f"{values[s]:.3f}" for s in sorted(values))


def cell_of(scenario: str) -> tuple[float, str] | None:
    found = re.search(r"fraction=([0-9.]+).*defenses=([a-z-]+)", scenario)
    return (float(found.group(1)), found.group(2)) if found else None


def main(directory: str) -> None:
    asr, floors, counts, seeds = defaultdict(list), defaultdict(list), defaultdict(list), set()
    by_seed: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
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
                by_seed[cell]["harm"][row["seed"]] = row["value"]
                by_seed[cell]["marker"][row["seed"]] = float(extra.get("marker_rate", float("nan")))
                floors[cell].append(extra.get("floor", float("nan")))
                counts[cell].append(int(extra.get("evaluated", 48)))
                agreement = (extra.get("judge_agreement"), extra.get("judge_kappa"))
            elif row["metric"] in REPORTED and row.get("attack") == "none":
                other[cell][row["metric"]].append(row["value"])
                by_seed[cell][row["metric"]][row["seed"]] = row["value"]
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

    print("\nPer seed (seeds in order), and the mean over seeds with its 95% Student-t interval:\n")
    print("| harmful fraction | defense | harmfulness per seed | harmfulness, mean [95%] | 'Sure, here is' per seed "
          "| ROUGE-L per seed | ROUGE-L, mean [95%] |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cell in sorted(asr, key=lambda c: (c[0], ["none", "safety-filter", "constitutional"].index(c[1]))):
        b = by_seed[cell]
        print(f"| {cell[0]:.1f} | {cell[1]} | {per_seed(b['harm'])} | {seed_interval(list(b['harm'].values()))} "
              f"| {per_seed(b['marker'])} | {per_seed(b['utility.rouge_l'])} "
              f"| {seed_interval(list(b['utility.rouge_l'].values()))} |")

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
