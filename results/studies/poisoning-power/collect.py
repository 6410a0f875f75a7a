"""Table 4's poisoning verdicts against the number of seeds (the poisoning-power study).

Reads a store holding ``scenarios/table4-poisoning.yaml``'s runs at 40 seeds (the study's own, or the
published ``results/store/results.jsonl.xz`` decompressed: table4-poisoning.yaml runs 40 seeds since session
20) and keeps that file's cells (by scenario hash; RLHF's poisoning cells are another file's), builds Table 4's cells as ``bench report`` does (``bench.reporting.table4``, paper marks from
``bench.reporting.paper4``) on the runs of seeds 0..n-1 for each n in SEEDS, and writes ``curves.csv``
(one row per cell and n: the paired change with its 95% interval, the verdict, the paper comparison) and
``mde.csv`` (per column and n: the pooled paired sd and the minimum detectable effect,
``bench.reporting.matrix4.column_mde``). Prints the README's tables.

Usage (from the repository root): PYTHONPATH=. python results/studies/poisoning-power/collect.py RUNS_DIR
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from bench.reporting import leaderboard, matrix4, paper4, table4
from bench.reporting.report import load_rows
from bench.tools.study_runs import write_curve

SEEDS = (5, 10, 20, 40)
ROLES = ("backdoor", "byzantine")
HERE = Path(__file__).parent


def cells_at(rows: list[dict], seeds: int) -> list[dict]:
    """Table 4's poisoning cells from the runs of seeds 0..seeds-1."""
    kept = [r for r in rows if int(r["seed"]) < seeds]
    board = leaderboard.build(kept)
    cells = table4.build(board, paper=paper4.annotate, stored=table4.floors(kept))
    return [asdict(c) for c in cells if c.role in ROLES]


def grid_hashes() -> set[str]:
    """The scenario hashes of table4-poisoning.yaml's cells and of their attacker-free twins."""
    from bench.spec.scenario import load

    cells = load("scenarios/table4-poisoning.yaml")
    return {s.hash for s in cells} | {s.without_attacks().hash for s in cells}


def main(runs: str) -> None:
    hashes = grid_hashes()
    rows = [r for r in load_rows(runs) if r["scenario_hash"] in hashes]
    found = max(int(r["seed"]) for r in rows) + 1
    by_n = {n: cells_at(rows, n) for n in SEEDS if n <= found}
    columns = ("method", "defense", "role", "change", "change_low", "change_high", "threshold", "verdict", "paper",
               "comparison")
    curve = [{"seeds": n, "paired_seeds": c["seeds"], **{k: c[k] for k in columns}}
             for n, cells in by_n.items() for c in cells]
    write_curve(HERE / "curves.csv", ["seeds", "paired_seeds", *columns], curve)
    mde = [{"seeds": n, "role": m.role, "defense": m.defense, "cells": m.cells, "sd": m.sd, "mde": m.mde, "goal": m.goal}
           for n, cells in by_n.items() for m in matrix4.column_mde(cells)]
    write_curve(HERE / "mde.csv", ["seeds", "role", "defense", "cells", "sd", "mde", "goal"], mde)
    print(verdict_table(by_n))
    print(mde_table(mde))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def verdict_table(by_n: dict[int, list[dict]]) -> str:
    last = max(by_n)
    ns = sorted(by_n)
    head = ["role", "method", "defense", *(f"{n} seeds" for n in ns), f"change at {last} [95% CI]", "paper",
            f"comparison at {min(ns)} → {last}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keyed = {n: {(c["role"], c["method"], c["defense"]): c for c in cells} for n, cells in by_n.items()}
    for key in sorted(keyed[last], key=lambda k: (ROLES.index(k[0]), table4._rank(k[1], table4.METHOD_ORDER),
                                                  table4._rank(k[2], table4.DEFENSE_ORDER))):
        c = keyed[last][key]
        first = keyed[min(ns)].get(key, {})
        verdicts = [keyed[n][key]["verdict"] if key in keyed[n] else "" for n in ns]
        lines.append("| " + " | ".join([*key, *verdicts,
                                        f"{_fmt(c['change'])} [{_fmt(c['change_low'])}, {_fmt(c['change_high'])}]",
                                        c["paper"], f"{first.get('comparison', '')} → {c['comparison']}"]) + " |")
    return "\n".join(lines)


def mde_table(mde: list[dict]) -> str:
    ns = sorted({m["seeds"] for m in mde})
    head = ["role", "defense", *(f"MDE at {n} (sd)" for n in ns), "goal"]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keyed = {(m["role"], m["defense"], m["seeds"]): m for m in mde}
    for role, defense in dict.fromkeys((m["role"], m["defense"]) for m in mde):
        texts = [f"{keyed[(role, defense, n)]['mde']:.3f} ({keyed[(role, defense, n)]['sd']:.3f})"
                 if (role, defense, n) in keyed else "" for n in ns]
        lines.append("| " + " | ".join([role, defense, *texts, f"{keyed[(role, defense, ns[-1])]['goal']:g}"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(*sys.argv[1:])
