"""Table 4's membership column as published, from its leaderboard: per method, the undefended runs' headline (a run's
strongest attack) and which attack it was; the figures of the README's "What moved in session 35".

Per method and defense: runs, mean / lowest / highest headline AUC, mean TPR at 1% FPR of the headline attack, and how
many runs each attack headlined; then, over the five white-box methods without a defense, the members found at 1% FPR
a run (TPR x the run's 64 members: mean, lowest, highest).

Usage (from the repository root): python results/studies/mia-online/table4_headline.py [results/leaderboard.csv]
"""

from __future__ import annotations

import sys

import pandas as pd

MEMBERS = 64  # table4.yaml: 16 members per client, 4 clients


def main(path: str = "results/leaderboard.csv") -> None:
    board = pd.read_csv(path)
    runs = board[board.scenario.str.startswith("table4[") & (board.tier == "open-weight")]
    summary = runs.groupby(["method", "defenses"]).agg(
        runs=("seed", "count"), auc=("mia.auc", "mean"), auc_low=("mia.auc", "min"), auc_high=("mia.auc", "max"),
        tpr_at_1pct=("mia.tpr@0.01", "mean"))
    summary["headline attacks"] = runs.groupby(["method", "defenses"])["mia_attack"].agg(
        lambda names: ", ".join(f"{name} {count}" for name, count in names.value_counts().items()))
    print(summary.round(3).to_string())
    white_box = runs[(runs.method != "rlhf") & (runs.defenses == "none")]
    members = (white_box["mia.tpr@0.01"] * MEMBERS).round()
    print(f"\nfive white-box methods, no defense: {len(white_box)} runs, LiRA headlines "
          f"{int((white_box.mia_attack == 'mia-lira').sum())}; members at 1% FPR a run: mean {members.mean():.2f}, "
          f"{int(members.min())}-{int(members.max())} (TPR {white_box['mia.tpr@0.01'].mean():.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
