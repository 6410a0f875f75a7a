"""Why DAGER reads nothing from some RLHF reward-model updates: run one cell of the pipelines curve and
print, per client step, the Bradley-Terry margin and whether the pair's chosen and rejected inputs are
identical after truncation, then what DAGER sees (update norm, span ranks) and returns.

Usage (from the repository root; PYTHONPATH=. so that this checkout is imported):
PYTHONPATH=. OMP_NUM_THREADS=1 python results/studies/inversion-curves/diag_rlhf.py FILE RANK BATCH SEED [SEED ...]
runs the RLHF cell of scenario FILE with that LoRA rank and batch size and no defense, e.g.
``scenarios/studies/inversion-curves-pipelines.yaml 128 1 0 1`` (the README's figures: seed 1's attacked
update is 0.0; seed 0 reads one sequence of 24 tokens) or ``scenarios/table4-inversion.yaml 8 2 0 1 2 3 4``
(Table 4's own RLHF cell).
"""

from __future__ import annotations

import sys

import attacks.inversion.dager as dager
import bench.methods.rlhf as rlhf
from bench.engine.runner import execute
from bench.spec.scenario import load

ORIGINAL = (dager.Dager.invert, dager.Dager._search, rlhf.Rlhf.reward_margins)


def margins(self, model, batch):
    found = ORIGINAL[2](self, model, batch)
    if found.requires_grad:  # a training step, not the evaluation
        same = (batch["input_ids"] == batch["rejected_input_ids"]).all(dim=1).tolist()
        print("  step: margins", [round(float(m), 3) for m in found.detach()], "chosen == rejected", same)
    return found


def search(self, model, layers, checks, most, relative):
    print("  dager: span ranks", [c.rank for c in checks], "informative", [c.informative for c in checks],
          "sequences asked", most)
    return ORIGINAL[1](self, model, layers, checks, most, relative)


def invert(self, view, target, rng):
    print("  dager: attacked update norm", float(target.update.norm()))
    found = ORIGINAL[0](self, view, target, rng)
    for sequence in found:
        print(f"  dager: {len(sequence)} tokens: {view.tokenizer.decode(sequence)!r}")
    return found


def main(file: str, rank: int, batch: int, seeds: list[int]) -> None:
    rlhf.Rlhf.reward_margins, dager.Dager._search, dager.Dager.invert = margins, search, invert
    for scenario in load(file):
        if scenario.method.name != "rlhf" or scenario.defenses:
            continue
        if (scenario.method.config.rank, scenario.federation.batch_size) != (rank, batch):
            continue
        for seed in seeds:
            print(f"seed {seed}")
            for row in execute(scenario, seed):
                if row.attack == "inversion-dager" and row.metric in ("inversion.rouge1", "inversion.exact"):
                    print(f"  {row.metric} {row.value:.3f} (floor {row.extra.get('floor')})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(s) for s in sys.argv[4:]])
