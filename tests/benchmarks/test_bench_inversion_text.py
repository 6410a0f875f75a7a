"""Benchmark: DAGER on real templated text, FedSGD, full fine-tuning, both zoo decoders.

The zoo models (width 128, pretrained on the generated corpus) and synthetic clinical notes cut to 8
tokens, so that a batch of 16 (16 x 7 inputs with gradient) stays below the width. The notes share a
template the models predict confidently: the hard case for the span checks, since those tokens
leave weak gradients (``attacks/inversion/dager.py``). The client sends its gradient step (FedSGD).
Attack time is the benchmark; recovery goes to ``extra_info`` and the assertion guards the
exactness the attack promises in this regime (issue 5: at least 0.95 up to batch 16).
"""

from __future__ import annotations

import pytest
import torch

from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from bench.engine.views import ViewBuilder
from bench.scoring.score import score
from tests.helpers import make_scenario

TASK = {"name": "synthetic-clinical", "params": {"num_classes": 5, "max_length": 8, "objective": "language"}}


@pytest.mark.perf
@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_dager_recovers_templated_notes_under_fedsgd(benchmark, tmp_path, model, batch):
    federation = {"clients": 2, "clients_per_round": 2, "rounds": 1, "batch_size": batch, "lr": 0.01,
                  "protocol": "fedsgd", "examples_per_client": 80, "eval_examples": 16}
    scenario = make_scenario(tmp_path, model=model, task=TASK, method="fft", federation=federation,
                             attacks=[{"name": "inversion-dager", "params": {"max_clients": 1}}])
    built = plan(scenario)
    prepared = prepare(scenario, 0, built)
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    views = ViewBuilder(scenario, 0, built, prepared.transcript, prepared.tokenizer, prepared.clients,
                        prepared.task_data, prepared.truth)
    attack = built.attacks[0]
    view = views.for_attack(attack)
    prediction = benchmark.pedantic(attack.run, args=(view, torch.Generator().manual_seed(0)), rounds=1, iterations=1)
    metrics = {m.name: m.value for m in score(prediction, views.truth)}
    benchmark.extra_info.update(metrics)
    assert metrics["inversion.exact"] >= 0.95
