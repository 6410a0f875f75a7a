"""Offline LiRA against the number of federated shadows and the variance estimate (mia-online study, issue 15 item 2).

Rebuilds one cell of scenarios/studies/mia-online-offline.yaml (same seed: same data, members and trained model as
the sweep and as Table 4's undefended cell), runs Table 4's two membership attacks on it with the sweep's
generators (their figures must equal the stored ones: a check that this is the same model), then lets mia-lira
train 128 federated shadows of 64 public records (the file's design, 4x the shadows) and scores the first
8/16/32/64/128 of them four ways: variances pooled over candidates (the file's ``variance: global``) or per
candidate (LiRA's per-example variance, which Carlini et al. 2022 use from 64 shadows on), each on raw signals and
after normalising every model's signals over the candidates (``normalised_fit``). Offline, every shadow is an OUT
observation of every candidate, so a per-candidate variance rests on all k shadows.

Writes shadow_counts.csv beside this file (one row per cell, attack and variant; one process appends per cell).
Usage (from the repository root): PYTHONPATH=. python results/studies/mia-online/shadow_counts.py METHOD SEED [...]
(pairs; the README's figures: two processes, five pairs each); ``--summary`` prints the README's table from the CSV:
per variant the means over the cells, against Table 4's attack (the higher-AUC one of its two, per cell, as Table 4
picks it) on the same models.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

from variants import trained_cell  # this folder's sibling script (Python puts a script's folder on sys.path)

from attacks.mia.lira import ShadowFit, normalised_fit, offline_scores
from bench.api.seeding import generator
from bench.scoring.mia import point_metrics

SCENARIO = "scenarios/studies/mia-online-offline.yaml"
SHADOWS = 128
SUBSETS = (8, 16, 32, 64, 128)
OUT = Path(__file__).with_name("shadow_counts.csv")
COLUMNS = ["method", "seed", "attack", "shadows", "variance", "signals", "mia.auc", "mia.tpr@0.01", "mia.tpr@0.001",
           "members", "nonmembers"]


def lira_variants(fit: ShadowFit) -> list[dict]:
    """Offline scores from the first k shadows, pooled or per-candidate variance, raw or normalised signals."""
    rows = []
    for k in SUBSETS:
        subset = ShadowFit(fit.target, fit.observations[:k], None)
        for signals, used in (("raw", subset), ("normalised", normalised_fit(subset))):
            for variance, pooled in (("pooled", True), ("per-candidate", False)):
                rows.append({"attack": "mia-lira offline", "shadows": k, "variance": variance, "signals": signals,
                             "scores": offline_scores(used, pooled=pooled)})
    return rows


def cell(method: str, seed: int) -> list[dict]:
    built, views = trained_cell(SCENARIO, method, seed)
    flags = views.truth.member_flags
    scored = [{"attack": a.name, "shadows": "", "variance": "", "signals": "",
               "scores": a.run(views.for_attack(a), generator("run", seed, "attack", a.name)).scores}
              for a in built.attacks if a.name != "mia-lira"]
    lira = next(a for a in built.attacks if a.name == "mia-lira")
    lira = type(lira)(dataclasses.replace(lira.config, shadows=SHADOWS))
    started = time.perf_counter()
    fit = lira.observe(views.for_attack(lira), generator("run", seed, "attack", lira.name))
    print(f"{method} seed {seed}: {SHADOWS} shadows in {time.perf_counter() - started:.0f} s", flush=True)
    members, nonmembers = int(flags.sum()), int((~flags.bool()).sum())
    rows = []
    for row in scored + lira_variants(fit):
        metrics = point_metrics(row.pop("scores"), flags)
        rows.append({"method": method, "seed": seed, **row, "members": members, "nonmembers": nonmembers,
                     **{k: round(v, 4) for k, v in metrics.items() if k in COLUMNS}})
    return rows


def summary(rows: list[dict]) -> str:
    """Markdown: per LiRA variant, mean AUC, TPR at 1% and 0.1% FPR, and members found at 1% FPR (range), over the
    cells, beside Table 4's attack on the same cells, and on how many cells the variant beats it (AUC; members)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        cells[row["method"], row["seed"]].append(row)
    groups: dict[str, list[tuple[dict, dict]]] = defaultdict(list)  # variant -> (its row, Table 4's row) per cell
    for cell_rows in cells.values():
        table4 = max((r for r in cell_rows if not r["shadows"]), key=lambda r: float(r["mia.auc"]))
        groups["Table 4's attack"].append((table4, table4))
        for r in cell_rows:
            if r["shadows"]:
                groups[f"{r['shadows']} shadows, {r['variance']} variance, {r['signals']}"].append((r, table4))
    lines = [f"{len(cells)} cells (method x seed), {rows[0]['members']} members against {rows[0]['nonmembers']} "
             "non-members each", "",
             "| attack | AUC | TPR@1%FPR | members at 1% FPR (range) | TPR@0.1%FPR | cells above Table 4's: AUC; members |",
             "|---|---|---|---|---|---|"]
    for name, pairs in groups.items():
        found = [_members(r) for r, _ in pairs]
        above_auc = sum(float(r["mia.auc"]) > float(t["mia.auc"]) for r, t in pairs)
        above_members = sum(_members(r) > _members(t) for r, t in pairs)
        lines.append(f"| {name} | {mean(float(r['mia.auc']) for r, _ in pairs):.3f} | "
                     f"{mean(float(r['mia.tpr@0.01']) for r, _ in pairs):.3f} | {mean(found):.1f} ({min(found)}-{max(found)}) | "
                     f"{mean(float(r['mia.tpr@0.001']) for r, _ in pairs):.3f} | {above_auc}; {above_members} |")
    return "\n".join(lines)


def _members(row: dict) -> int:
    """Members found at 1% FPR."""
    return round(float(row["mia.tpr@0.01"]) * int(row["members"]))


def main(*pairs: str) -> None:
    if pairs == ("--summary",):
        with OUT.open() as handle:
            print(summary(list(csv.DictReader(handle))))
        return
    for method, seed in zip(pairs[::2], pairs[1::2], strict=True):
        rows = cell(method, int(seed))
        with OUT.open("a", newline="") as handle:  # appended per cell: a killed process keeps what it finished
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
