"""Which records top each membership attack's ranking at 1% FPR? Behind results/studies/mia-server/README.md.

Reruns full fine-tuning's cells of a scenario file (Table 4's undefended fft cell: scenarios/studies/mia-server.yaml
with Table 4's own references, scenarios/studies/mia-ranking.yaml with stronger ones) through the runner's steps,
as ``atypical.py`` does, and for each final-model attack prints: the threshold of the scorer's TPR-at-1%-FPR point
(the lowest score whose FPR is at most 1%: just above the 11th highest of 1,000 non-members), how
many of the (up to 10) non-members at or above it are atypical notes and how many
the final model classifies right; how many atypical members there are, how many the final model classifies right
(memorised: their symptom names another condition) and how many score above the threshold; and how many members
score at or above it (the TPR at 1% FPR the store reports).
Attacks from the server's vantage are skipped (``mia-gradient`` reads updates, not the final model).

    PYTHONPATH=. python results/studies/mia-server/ranking.py SCENARIO_FILE [SEED ...]   # default seeds 0 1 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.api.registry import load_plugins
from bench.api.seeding import generator
from bench.api.vocabulary import Vantage
from bench.spec.scenario import load

sys.path.insert(0, str(Path(__file__).parent))
from atypical import is_atypical, lowest_threshold, trained_views  # noqa: E402  (the study's own helpers, beside this script)

ALPHA = 0.01


def main(path: str, seeds: list[int]) -> None:
    load_plugins()
    print("| seed | attack | threshold | top non-members: atypical | classified right | atypical members | "
          "classified right | above threshold | members above threshold |\n|---|---|---|---|---|---|---|---|---|")
    for scenario in load(path):
        if scenario.method.name != "fft":
            continue
        for seed in seeds:
            built, views = trained_views(scenario, seed)
            members = views.truth.member_flags.bool()
            for attack in built.attacks:
                if attack.vantage != Vantage.EXTERNAL:
                    continue
                view = views.for_attack(attack)
                atypical = torch.tensor([is_atypical(c) for c in view.candidates])
                labels = torch.tensor([int(c["label"]) for c in view.candidates])
                right = view.final_model.class_logits(view.candidates).argmax(1) == labels
                scores = attack.run(view, generator("run", seed, "attack", attack.name)).scores.double()
                # the scorer's point, not the 10th non-member's score: members between the 10th and 11th
                # non-member count at 1% FPR (session 27's ">= 10th" undercounted them, read as a moving fit)
                threshold = lowest_threshold(scores, members, ALPHA)
                top, found = ~members & (scores >= threshold), members & (scores >= threshold)
                print(f"| {seed} | {attack.name} | {float(threshold):.2f} | {int((top & atypical).sum())} of "
                      f"{int(top.sum())} | {int((top & right).sum())} | {int((members & atypical).sum())} | "
                      f"{int((members & atypical & right).sum())} | {int((found & atypical).sum())} | "
                      f"{int(found.sum())} of {int(members.sum())} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]] or [0, 1, 2])
