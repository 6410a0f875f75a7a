"""Benchmark: DAGER attack time (and recovery) against batch size, FedSGD, full fine-tuning.

A tiny GPT-2 (d = 128, 4 layers, 2,000 tokens) and sequences of 8 tokens, so that even 16 x 7
inputs with gradient stay below the width (the span check's limit). Recovery figures go to
``extra_info``; the assertion guards the exactness the attack promises in this regime.
"""

from __future__ import annotations

import pytest
import torch

from attacks.inversion.dager import Dager
from bench.scoring.score import score
from bench.testing.inversion import TinyArch, build_method, random_sequences, run_round

ARCH = TinyArch(family="gpt2", vocab=2000, hidden=128, layers=4, heads=4, positions=64)
LENGTH = 8


@pytest.mark.perf
@pytest.mark.parametrize("batch", [1, 2, 4, 8, 16])
def test_dager_time_by_batch_size(benchmark, batch):
    method = build_method(ARCH)
    data = {0: random_sequences(batch, LENGTH, ARCH.vocab, torch.Generator().manual_seed(batch))}
    view, truth = run_round(method, data, lr=1e-2)
    attack = Dager(Dager.Config())
    prediction = benchmark.pedantic(attack.run, args=(view, torch.Generator()), rounds=1, iterations=1)
    metrics = {m.name: m.value for m in score(prediction, truth)}
    benchmark.extra_info.update(metrics)
    assert metrics["inversion.exact"] >= 0.95


GPT2_SMALL = TinyArch(family="gpt2", vocab=50257, hidden=768, layers=12, heads=12, positions=1024)


@pytest.mark.perf
def test_dager_at_batch_128_on_gpt2_small_shape(benchmark):
    """The paper's batch of 128 on GPT-2 small's shape (random weights: no hub download here), 6
    random tokens each so that 128 x 5 inputs stay below the width 768. About 5 minutes on one CPU
    thread (the vocabulary-wide layer-0 check dominates)."""
    method = build_method(GPT2_SMALL)
    data = {0: random_sequences(128, 6, GPT2_SMALL.vocab, torch.Generator().manual_seed(128))}
    view, truth = run_round(method, data, lr=1e-2)
    attack = Dager(Dager.Config())
    prediction = benchmark.pedantic(attack.run, args=(view, torch.Generator()), rounds=1, iterations=1)
    metrics = {m.name: m.value for m in score(prediction, truth)}
    benchmark.extra_info.update(metrics)
    assert metrics["inversion.rouge1"] > 0.99 and metrics["inversion.rouge2"] > 0.99
