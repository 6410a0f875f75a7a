"""Table 4's membership cells with offline LiRA beside its two attacks (scenarios/studies/mia-online-table4.yaml).

Reads the runs of that file (defenses none, dp-local, dp-central at epsilon 8; five methods; seeds 0-5) and prints
the README's two tables: per method, defense and attack the mean AUC and the members found at 1% FPR per
seed (of the run's members: 64 here); per defense and attack the paired change in AUC against the undefended cell of the same method and seed, its
standard deviation pooled over the methods (each method's pairs are one group, as Table 4 pools a column's cells), the minimum
detectable effect that sd gives at Table 4's 6 seeds, and the seeds Table 4's goal (0.05) would need
(``bench.reporting``'s own formulas); the same for the strongest of the three per run, which is what Table 4 reads
(a run's headline AUC is its strongest attack's).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-online/table4_lira.py RUNS_DIR [...]
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from bench.reporting.matrix4 import seeds_needed
from bench.reporting.verdict import mde, pooled_sd
from bench.tools.study_runs import ok_rows

FILE = "mia-online-table4"
ATTACKS = ("mia-reference", "mia-calibrated", "mia-lira")
DEFENSES = ("none", "dp-local", "dp-central")
TABLE4_SEEDS, GOAL = 6, 0.05
STRONGEST = "strongest of the three"


def figures(*runs: str) -> dict[tuple[str, str, str, int], dict[str, float]]:
    """(method, defense, attack, seed) -> {metric: value} for the file's runs."""
    names: dict[str, str] = {}
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in ok_rows(*runs):
        config = (row.get("extra") or {}).get("scenario_config")
        if config:
            names[row["run_id"]] = config.get("name", "")
        if names.get(row["run_id"], "").startswith(FILE) and row["attack"] in ATTACKS and row["metric"] in ("mia.auc", "mia.tpr@0.01"):
            entry = out[row["method"], row["defenses"], row["attack"], row["seed"]]
            entry[row["metric"]] = row["value"]
            entry["members"] = (row.get("extra") or {}).get("members", 0)  # the run's own count, not assumed
    return out


def with_strongest(data: dict[tuple[str, str, str, int], dict[str, float]]) -> None:
    """Add each run's strongest AUC of the three as attack ``STRONGEST``: what Table 4 reads (a run's headline)."""
    runs = {(m, d, s) for (m, d, _, s) in data}
    for m, d, s in runs:
        aucs = [data[m, d, a, s]["mia.auc"] for a in ATTACKS if (m, d, a, s) in data]
        data[m, d, STRONGEST, s] = {"mia.auc": max(aucs)}


def main(*runs: str) -> None:
    data = figures(*runs)
    with_strongest(data)
    methods = sorted({k[0] for k in data})
    print("| method | defense | " + " | ".join(f"{a} AUC | members at 1% FPR" for a in ATTACKS) + " |")
    print("|---|---|" + "---|---|" * len(ATTACKS))
    for method in methods:
        for defense in DEFENSES:
            cells = []
            for attack in ATTACKS:
                got = [v for (m, d, a, _), v in sorted(data.items()) if (m, d, a) == (method, defense, attack)]
                cells.append(f"{statistics.fmean(v['mia.auc'] for v in got):.3f} | "
                             f"{', '.join(str(round(v['mia.tpr@0.01'] * v['members'])) for v in got)}" if got else " | ")
            print(f"| {method} | {defense} | " + " | ".join(cells) + " |")
    print("\n| defense | attack | pairs | mean change in AUC | paired sd (pooled over methods) | MDE at 6 seeds | "
          "seeds for MDE 0.05 |\n|---|---|---|---|---|---|---|")
    for defense in DEFENSES[1:]:
        for attack in (*ATTACKS, STRONGEST):
            groups, changes = [], []
            for method in methods:
                diffs = [data[method, defense, attack, s]["mia.auc"] - data[method, "none", attack, s]["mia.auc"]
                         for (m, d, a, s) in data if (m, d, a) == (method, defense, attack)
                         and (method, "none", attack, s) in data]
                changes += diffs
                if len(diffs) >= 2:
                    groups.append((statistics.stdev(diffs), len(diffs)))
            sd = pooled_sd(groups)
            detectable = mde(sd, TABLE4_SEEDS)
            print(f"| {defense} | {attack} | {len(changes)} | {statistics.fmean(changes):+.3f} | "
                  f"{sd:.3f} | {detectable:.3f} | {seeds_needed(sd, GOAL)} |" if sd is not None else
                  f"| {defense} | {attack} | {len(changes)} | | | | |")


if __name__ == "__main__":
    main(*sys.argv[1:])
