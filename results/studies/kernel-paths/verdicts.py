"""Compare Table 4's membership rows (open-weight tier, DP columns) of two table4.csv files: the published one
(table4.yaml made on AVX-512, session 19) and table4.yaml rerun on the pinned AVX2 path. Behind this folder's
README ("Does the path move a verdict?").

Usage (from the repository root): python results/studies/kernel-paths/verdicts.py results/table4.csv \\
    results/studies/kernel-paths/table4-avx2.csv
"""

from __future__ import annotations

import csv
import sys


def membership_rows(path: str) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(path, newline="") as handle:
        return {(r["method"], r["defense"], r["attack"]): r for r in csv.DictReader(handle)
                if r["role"] == "mia" and r["tier"] == "open-weight" and r["defense"] in ("dp-local", "dp-central")}


def main(first: str, second: str) -> None:
    a, b = membership_rows(first), membership_rows(second)
    print("| method | defense | attack | AUC without | change [CI] | utility without | verdict |\n|---|---|---|---|---|---|---|")
    for key in sorted(a):
        x, y = a[key], b[key]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {x['success_without']} / {y['success_without']} | "
              f"{x['change']} [{x['change_low']}, {x['change_high']}] / {y['change']} [{y['change_low']}, {y['change_high']}] | "
              f"{x['utility_without']} / {y['utility_without']} | {x['verdict']} / {y['verdict']} |")
    same = sum(a[k]["verdict"] == b[k]["verdict"] for k in a)
    print(f"\nsame verdict: {same} of {len(a)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
