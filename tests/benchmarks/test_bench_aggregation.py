"""Aggregation time per robust rule for 100 clients x 1M parameters (float32, CPU unless CUDA).

Run: OMP_NUM_THREADS=1 .venv/bin/pytest -m perf tests/benchmarks/test_bench_aggregation.py
"""

from __future__ import annotations

import pytest
import torch

from bench.api.registry import DEFENSES
from defenses.robust.rules import weighted_mean

CLIENTS, PARAMETERS = 100, 1_000_000
RULES = ["robust-krum", "robust-median", "robust-trimmed", "robust-clip", "robust-fltrust", "robust-geomed", "robust-cclip"]

pytestmark = pytest.mark.perf


@pytest.fixture(scope="module")
def stacked():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    # A shared direction plus client noise, and 10 far-off updates, so iterative rules do real work.
    updates = torch.randn(PARAMETERS, generator=g) * 0.01 + torch.randn(CLIENTS, PARAMETERS, generator=g) * 0.05
    updates[:10] += 1.0
    return updates.to(device), torch.ones(CLIENTS, device=device)


def _synchronised(fn):
    def run():
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        return out
    return run


def test_fedavg_mean_baseline(benchmark, stacked):
    updates, weights = stacked
    result = benchmark.pedantic(_synchronised(lambda: weighted_mean(updates, weights)), rounds=3, iterations=1)
    assert result.shape == (PARAMETERS,)


@pytest.mark.parametrize("name", RULES)
def test_robust_rule(benchmark, stacked, name):
    updates, weights = stacked
    defense = DEFENSES.get(name)(DEFENSES.get(name).Config())
    server_update = updates[10:].mean(0)
    defense.server_update_fn = lambda round_index: server_update
    generator = torch.Generator().manual_seed(0)
    aggregate = _synchronised(lambda: defense.aggregate(0, updates, weights, generator))
    result = benchmark.pedantic(aggregate, rounds=3, iterations=1)
    assert result.shape == (PARAMETERS,) and torch.isfinite(result).all()
