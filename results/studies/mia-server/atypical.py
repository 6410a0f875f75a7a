"""Which members do Table 4's membership attacks find at 1% FPR? Behind results/studies/mia-server/README.md.

Reruns the classification cells of scenarios/studies/mia-server.yaml (Table 4's undefended fft and LoRA cells)
through the runner's own steps (plan, prepare, the round loop, the attackers' views), keeps each attack's
per-candidate scores (the store keeps only metrics), and counts, among the members an attack ranks above all
but 1% of the non-members, the *atypical* notes: those whose symptom belongs to another condition than their
label (``bench.world.synthetic.atypical_note``; read back from the text, as every symptom phrase belongs to one
condition). Prints one row per (method, seed, attack) with the run's own TPR at 1% FPR as a check that the
rerun reproduces the stored run.

    PYTHONPATH=. python results/studies/mia-server/atypical.py [SEED ...]   # default seeds 0 1 2
"""

from __future__ import annotations

import sys

import torch

from bench.api.registry import load_plugins
from bench.api.seeding import generator
from bench.engine.runner import _federate, plan, prepare
from bench.engine.views import ViewBuilder
from bench.scoring.mia import roc_curve
from bench.spec.scenario import load
from bench.world import synthetic

ALPHA = 0.01


def symptom_condition(text: str) -> str:
    """The condition whose symptom phrase the note names."""
    return next(name for name, (symptoms, _) in synthetic.CONDITIONS.items() if any(s in text for s in symptoms))


def is_atypical(record: dict) -> bool:
    return symptom_condition(record["text"]) != synthetic.CONDITION_NAMES[int(record["label"])]


def lowest_threshold(scores: torch.Tensor, members: torch.Tensor, alpha: float) -> float:
    """The lowest ROC threshold whose FPR is at most ``alpha``: where the scorer's TPR at ``alpha`` is read."""
    fpr, _, thresholds = roc_curve(scores, members)
    return float(thresholds[(fpr <= alpha + 1e-12).nonzero().flatten().max()])


def found_at(scores: torch.Tensor, members: torch.Tensor, alpha: float) -> torch.Tensor:
    """Members ranked at or above the lowest threshold whose FPR is at most ``alpha`` (the TPR@alpha point)."""
    return members & (scores.double() >= lowest_threshold(scores, members, alpha))


def trained_views(scenario, seed: int) -> tuple:
    """(plan, attackers' views) of one run, trained through the runner's own steps (plan, prepare, the round
    loop): what ``bench.engine.runner`` does before it runs the attacks, kept open so per-candidate scores can be
    read (the store keeps metrics only)."""
    built = plan(scenario)
    run = prepare(scenario, seed, built)
    _federate(run)
    return built, ViewBuilder(scenario, seed, built, run.transcript, run.tokenizer, run.clients, run.task_data,
                              run.truth, max_candidates=scenario.federation.mia_candidates or None)


def main(seeds: list[int]) -> None:
    load_plugins()
    print("| method | seed | attack | TPR@1%FPR | members found | of them atypical | atypical members |\n"
          "|---|---|---|---|---|---|---|")
    for scenario in load("scenarios/studies/mia-server.yaml"):
        if scenario.task.name != "synthetic-clinical":
            continue
        for seed in seeds:
            built, views = trained_views(scenario, seed)
            members = views.truth.member_flags.bool()
            atypical = torch.tensor([is_atypical(c) for c in views.candidates])
            for attack in built.attacks:
                scores = attack.run(views.for_attack(attack), generator("run", seed, "attack", attack.name)).scores
                found = found_at(scores, members, ALPHA)
                print(f"| {scenario.method.name} | {seed} | {attack.name} | {int(found.sum()) / int(members.sum()):.3f} | "
                      f"{int(found.sum())} | {int((found & atypical).sum())} | {int((members & atypical).sum())} |",
                      flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2])
