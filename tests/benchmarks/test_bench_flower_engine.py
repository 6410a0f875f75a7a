"""The Flower engine's cost against the in-process engine, side by side (pytest-benchmark; ``-m perf``).

Run: OMP_NUM_THREADS=1 .venv/bin/pytest -m perf tests/benchmarks/test_bench_flower_engine.py

One whole run (``runner.execute``: build, rounds, utility, no attack) of a LoRA federation (4 clients,
all sampled, tiny-gpt2) per engine and per number of rounds (1 and 3):

- ``inprocess``: TierBench's own loop (clients one after another, ``client_batch: 1``, as the Flower
  ClientApps train);
- ``simulation``: ``federation.engine: flower``, Flower's simulation engine (Ray actors, started per run);
- ``deployment``: a SuperLink and two SuperNodes started as processes, the app submitted with ``flwr run``
  (``bench.engine.flower.deployment.run_scenario``).

Read per engine: per-round cost = (median at 3 rounds - median at 1 round) / 2; start-up = median at
1 round - per-round cost; overhead = per-round cost / the in-process per-round cost. Each result's
``extra_info`` names its engine and rounds. Needs the ``fl`` extra; skipped without it.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("flwr")

from bench.engine import runner  # noqa: E402
from tests.helpers import make_scenario  # noqa: E402

pytestmark = pytest.mark.perf

ENGINES = ["inprocess", "simulation", "deployment"]


def _execute(scenario, engine: str):
    if engine == "deployment":
        from bench.engine.flower.deployment import run_scenario

        return run_scenario(scenario, 0, supernodes=2)
    return runner.execute(scenario, 0)


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize("engine", ENGINES)
def test_run_cost_per_engine(benchmark, tmp_path, engine, rounds):
    scenario = make_scenario(tmp_path, attacks=[], federation={"clients": 4, "clients_per_round": 4, "rounds": rounds,
                                                               "local_steps": 5, "batch_size": 8, "examples_per_client": 32})
    federation = dataclasses.replace(scenario.federation, client_batch=1,
                                     engine="inprocess" if engine == "inprocess" else "flower")
    scenario = dataclasses.replace(scenario, federation=federation)
    benchmark.extra_info.update(engine=engine, rounds=rounds)
    rows = benchmark.pedantic(lambda: _execute(scenario, engine), rounds=2, iterations=1)
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"]
