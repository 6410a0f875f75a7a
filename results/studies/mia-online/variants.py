"""Score one set of federated-shadow LiRA observations several ways (mia-online study, issue 15 item 2).

Rebuilds one cell of scenarios/studies/mia-online-federated.yaml (same seed: same data, members and trained model),
lets its mia-lira attack train its 64 federated shadows once with the generator the sweep gave it (so the first
variant must reproduce the sweep's stored LiRA figures: a check that this is the same fit), then scores the one
set of observations as: online and offline LiRA with pooled variances (the attack's setting; offline reads only
the OUT shadows), online with per-candidate OUT variances (about 60 OUT observations each, 3-4 IN), and both
after normalising each model's signals over the candidates (``normalised_fit``: less the model's
median, over its interquartile range; mia-lira's ``normalise``): a shadow or a target whose confidences sit higher or spread wider overall then no longer
moves every candidate's score the same way. Writes variants.csv beside this file (one row per cell and variant).

Usage (from the repository root): PYTHONPATH=. python results/studies/mia-online/variants.py METHOD SEED [...]
(pairs, e.g. fft 1 lora 0; one process per pair is how the README's figures were made, two at a time)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from attacks.mia.lira import (
    ShadowFit,
    gaussian_log_density,
    masked_gaussian,
    normalised_fit,
    offline_scores,
    online_scores,
)
from bench.api.seeding import generator
from bench.engine import federation as fl
from bench.engine.runner import Plan, plan, prepare
from bench.engine.views import ViewBuilder
from bench.scoring.mia import point_metrics
from bench.spec.scenario import load

SCENARIO = "scenarios/studies/mia-online-federated.yaml"
OUT = Path(__file__).with_name("variants.csv")
COLUMNS = ["method", "seed", "variant", "mia.auc", "mia.tpr@0.01", "mia.tpr@0.001"]


def online_out_per_example(fit: ShadowFit) -> torch.Tensor:
    """Online LiRA with the IN variance pooled (3-4 observations each) and the OUT variance per candidate."""
    mean_in, var_in = masked_gaussian(fit.observations, fit.candidate_in, pooled=True)
    mean_out, var_out = masked_gaussian(fit.observations, ~fit.candidate_in, pooled=False)
    return gaussian_log_density(fit.target, mean_in, var_in) - gaussian_log_density(fit.target, mean_out, var_out)


def variants(fit: ShadowFit) -> dict[str, torch.Tensor]:
    norm = normalised_fit(fit)
    return {
        "online, pooled variance (the attack)": online_scores(fit, pooled=True),
        "offline, pooled variance": offline_scores(fit, pooled=True),
        "online, OUT variance per candidate": online_out_per_example(fit),
        "online, pooled, models normalised": online_scores(norm, pooled=True),
        "offline, pooled, models normalised": offline_scores(norm, pooled=True),
    }


def trained_cell(path: str, method: str, seed: int) -> tuple[Plan, ViewBuilder]:
    """``path``'s scenario of ``method`` as the sweep ran it at ``seed`` (same data, members and training): its plan
    and the views its attacks read (shadow_counts.py uses it too)."""
    scenario = next(s for s in load(path) if s.method.name == method)
    built = plan(scenario)
    p = prepare(scenario, seed, built)
    fl.run(p.fed, p.transcript, p.truth)
    views = ViewBuilder(scenario, seed, built, p.transcript, p.tokenizer, p.clients, p.task_data, p.truth,
                        max_candidates=scenario.federation.mia_candidates or None)
    return built, views


def cell(method: str, seed: int) -> list[dict]:
    built, views = trained_cell(SCENARIO, method, seed)
    lira = next(a for a in built.attacks if a.name == "mia-lira")
    fit = lira.observe(views.for_attack(lira), generator("run", seed, "attack", lira.name))  # the sweep's generator
    flags = views.truth.member_flags
    return [{"method": method, "seed": seed, "variant": name, **{k: round(v, 4) for k, v in point_metrics(scores, flags).items()
                                                                if k in COLUMNS}}
            for name, scores in variants(fit).items()]


def main(*pairs: str) -> None:
    rows = [row for method, seed in zip(pairs[::2], pairs[1::2], strict=True) for row in cell(method, int(seed))]
    with OUT.open("a", newline="") as handle:  # one process per cell appends its rows
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        if handle.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main(*sys.argv[1:])
