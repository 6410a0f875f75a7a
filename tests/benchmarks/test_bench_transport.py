"""Cost of the encrypted transports for LoRA-sized updates (pytest-benchmark; ``-m perf``).

Target: secure aggregation adds at most 10% to a round with 10 clients and ~100k-float LoRA updates
(one client's local training on the tiny models takes about 1-3 s). ``extra_info`` carries the bytes.
"""

from __future__ import annotations

import pytest
import torch

from bench.api.defense import Transport
from defenses.he import HomomorphicEncryption, encrypt
from defenses.secagg import SecureAggregation

pytestmark = pytest.mark.perf

CLIENTS, LENGTH = 10, 100_000


_RNG = torch.Generator().manual_seed(0)
UPDATES = {c: torch.randn(LENGTH, generator=_RNG) * 1e-3 for c in range(CLIENTS)}
WEIGHTS = {c: float(10 + c) for c in range(CLIENTS)}


def one_round(carrier: Transport, round_index: int = 0) -> torch.Tensor:
    """Encode every client's update and aggregate: the transport's whole share of a round."""
    updates, weights = UPDATES, WEIGHTS
    messages = carrier.encode(round_index, updates, weights, torch.Generator().manual_seed(round_index))
    return carrier.aggregate(round_index, messages, weights)


def test_bench_plain_round(benchmark):
    benchmark(one_round, Transport())


@pytest.mark.parametrize("variant", ["secagg", "secagg+"])
def test_bench_secagg_round(benchmark, variant):
    defense = SecureAggregation(SecureAggregation.Config(variant=variant, dropout_rate=0.1))
    rounds = iter(range(10**6))
    benchmark.pedantic(lambda: one_round(defense.transport(), next(rounds)), rounds=10, iterations=1)
    benchmark.extra_info.update(defense.costs())


def test_bench_he_encrypt_100k_floats(benchmark):
    pytest.importorskip("tenseal")
    defense = HomomorphicEncryption(HomomorphicEncryption.Config())
    carrier = defense.transport()
    carrier._ensure_keys(0)
    values = UPDATES[0].double().numpy()
    arguments = (carrier._client, values, 0)
    message = benchmark.pedantic(encrypt, args=arguments, rounds=5, iterations=1)
    benchmark.extra_info["expansion"] = carrier.message_bytes(message) / (4 * LENGTH)
    benchmark.extra_info["bytes"] = carrier.message_bytes(message)


def test_bench_he_round(benchmark):
    pytest.importorskip("tenseal")
    defense = HomomorphicEncryption(HomomorphicEncryption.Config())
    rounds = iter(range(10**6))
    benchmark.pedantic(lambda: one_round(defense.transport(), next(rounds)), rounds=2, iterations=1)
    benchmark.extra_info.update(defense.costs())
