"""The federated engine against a plain centralized loop doing the same optimizer steps.

LoRA on tiny-llama, 8 clients x 3 rounds x 10 local steps (240 steps) against 240 steps of the same
trainer on the same model and data. The engine trains its clients one after another
(``client_batch: 1``), the same steps as the central loop, so the ratio is the engine's own overhead
(batching is measured in ``test_bench_batched.py``). Nothing here asserts a time: the central benchmark
records ``engine_over_central`` (its mean over the engine's) in ``extra_info``, and
``bench/tools/check_perf.py`` fails a ``--benchmark-json`` file whose ratio exceeds the goal, 1.10.
"""

from __future__ import annotations

import pytest

from bench.api.seeding import generator
from bench.client.training import LocalJob, train_local
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from tests.helpers import make_scenario

SETTINGS = {"clients": 8, "clients_per_round": 8, "rounds": 3, "local_steps": 10, "batch_size": 8,
            "examples_per_client": 32, "lr": 0.003, "client_batch": 1}
STEPS = 8 * 3 * 10
MEANS: dict[str, float] = {}
"""The engine's mean seconds, read by the central benchmark (which runs after it)."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return make_scenario(tmp_path_factory.mktemp("engine"), model="tiny-llama", method="lora", federation=SETTINGS)


@pytest.mark.perf
@pytest.mark.benchmark(group="engine-vs-central")
def test_federated_engine(benchmark, scenario):
    def setup():
        prepared = prepare(scenario, 0, plan(scenario))
        return (prepared,), {}

    benchmark.pedantic(lambda p: fl.run(p.fed, p.transcript, p.truth), setup=setup, rounds=5)
    if _mean(benchmark) is not None:
        MEANS["engine"] = _mean(benchmark)


@pytest.mark.perf
@pytest.mark.benchmark(group="engine-vs-central")
def test_central_loop_same_steps(benchmark, scenario):
    def setup():
        prepared = prepare(scenario, 0, plan(scenario))
        method = prepared.built.method
        members = [e for c in prepared.clients for e in c.members]
        job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable], examples=members,
                       collate=prepared.fed.collate, example_losses=method.example_losses, steps=STEPS,
                       batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"], optimizer="adam",
                       rng=generator("central"))
        return (job,), {}

    benchmark.pedantic(train_local, setup=setup, rounds=5)
    if _mean(benchmark) and MEANS.get("engine"):
        benchmark.extra_info["engine_over_central"] = MEANS["engine"] / _mean(benchmark)


def _mean(benchmark) -> float | None:
    """The benchmark's mean seconds, or None when timing is off (``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    return getattr(getattr(stats, "stats", None), "mean", None)
