"""Benchmark: scoring 10,000 membership candidates (point metrics + 1,000 bootstrap resamples)."""

from __future__ import annotations

import pytest
import torch

from bench.api.predictions import MembershipScores
from bench.api.transcript import GroundTruth
from bench.scoring.score import score

CANDIDATES = 10_000


@pytest.mark.perf
def test_score_10k_candidates(benchmark):
    generator = torch.Generator().manual_seed(0)
    flags = torch.arange(CANDIDATES) % 2 == 0
    scores = torch.randn(CANDIDATES, generator=generator) + 0.5 * flags
    prediction, truth = MembershipScores(scores=scores), GroundTruth(member_flags=flags)
    metrics = benchmark(score, prediction, truth)
    auc = next(m for m in metrics if m.name == "mia.auc")
    assert 0.6 < auc.value < 0.7 and auc.ci_low < auc.value < auc.ci_high
