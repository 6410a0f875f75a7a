"""Which records top each membership attack's ranking at 1% FPR? Behind results/studies/mia-server/README.md.

Reruns full fine-tuning's cells of a scenario file (Table 4's undefended fft cell: scenarios/studies/mia-server.yaml
with Table 4's own references, scenarios/studies/mia-ranking.yaml with stronger ones) through the runner's steps,
as ``atypical.py`` does, and for each final-model attack prints: the score of the 10th highest non-member (the
threshold of 1% FPR among 1,000), how many of the 10 non-members at or above it are atypical notes and how many
the final model classifies right; how many atypical members there are, how many the final model classifies right
(memorised: their symptom names another condition) and how many score above the threshold; and how many members
score above it (the TPR at 1% FPR, up to ties).
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
from atypical import is_atypical, trained_views  # noqa: E402  (the study's own helpers, beside this script)

FALSE_POSITIVES = 10  # 1% of 1,000 non-members


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
                threshold = scores[~members].sort(descending=True).values[FALSE_POSITIVES - 1]
                top = ~members & (scores >= threshold)
                found = members & (scores >= threshold)
                print(f"| {seed} | {attack.name} | {float(threshold):.2f} | {int((top & atypical).sum())} of "
                      f"{int(top.sum())} | {int((top & right).sum())} | {int((members & atypical).sum())} | "
                      f"{int((members & atypical & right).sum())} | {int((found & atypical).sum())} | "
                      f"{int(found.sum())} of {int(members.sum())} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]] or [0, 1, 2])
