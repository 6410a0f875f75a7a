"""Summarise a protocols study (frameworks, split-cut-depth) from its results store: one row per scenario
cell, means over seeds; per attack its headline metrics with the floor the row stored, or why it did not run.

Usage: python results/studies/frameworks/summarise.py RESULTS_DIR > summary.md
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

COSTS = ("utility.accuracy", "cost.bytes_up", "cost.bytes_down", "cost.expansion", "cost.client_s", "cost.server_s",
         "cost.client_block_share", "cost.wall_s", "dp.epsilon", "cost.secagg.precision_loss")
ATTACK_METRICS = ("mia.auc", "mia.tpr@0.01", "inversion.rouge1", "inversion.token_f1", "inversion.exact")


def _cell(scenario: str) -> str:
    return scenario[scenario.find("[") + 1: scenario.rfind("]")] if "[" in scenario else scenario


def _mean(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return ""
    mean = statistics.fmean(values)
    return f"{mean:,.0f}" if abs(mean) >= 1000 else f"{mean:.3g}"


def main(directory: str) -> None:
    plain: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    attacks: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    floors: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    refused: dict[str, dict[str, str]] = defaultdict(dict)
    protocol: dict[str, str] = {}
    seeds: dict[str, set[int]] = defaultdict(set)
    for line in (Path(directory) / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            cell, extra = _cell(row["scenario"]), row.get("extra") or {}
            if "protocol" in extra:
                protocol[cell] = extra["protocol"]
            if row["metric"] == "run":
                refused[cell][row["attack"]] = f"{row['status']}: {str(row.get('error'))[:70]}"
                continue
            seeds[cell].add(int(row["seed"]))
            if row["attack"] == "none" and row["metric"] in COSTS:
                plain[cell][row["metric"]].append(row["value"])
            elif row["metric"] in ATTACK_METRICS:
                attacks[cell][(row["attack"], row["metric"])].append(row["value"])
                if isinstance(extra.get("floor"), (int, float)):
                    floors[cell][(row["attack"], row["metric"])].append(extra["floor"])
    print("| cell | protocol | seeds | accuracy | bytes up / round | bytes down / round | expansion | client s / round "
          "(under load) | client share of the blocks | secagg precision loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in plain:
        p = plain[cell]
        print(f"| {cell} | {protocol.get(cell, 'fedavg')} | {len(seeds[cell])} | {_mean(p['utility.accuracy'])} "
              f"| {_mean(p['cost.bytes_up'])} | {_mean(p['cost.bytes_down'])} | {_mean(p['cost.expansion'])} "
              f"| {_mean(p['cost.client_s'])} | {_mean(p['cost.client_block_share'])} "
              f"| {_mean(p['cost.secagg.precision_loss'])} |")
    print("\n| cell | attack | metric | value | floor (a failed attack) |")
    print("| --- | --- | --- | --- | --- |")
    for cell in plain:
        for (attack, metric), values in sorted(attacks[cell].items()):
            print(f"| {cell} | {attack} | {metric} | {_mean(values)} | {_mean(floors[cell][(attack, metric)])} |")
        for attack, why in sorted(refused[cell].items()):
            print(f"| {cell} | {attack} | not run | {why} | |")


if __name__ == "__main__":
    main(sys.argv[1])
