"""The Flower engines' cost against the in-process engine on the smoke cell, side by side (``-m perf``).

Run (about 7 min on 2 idle cores; the JSON is what the README's figures come from):

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -p no:cacheprovider -m perf --benchmark-only \
        --benchmark-json=flower-engine-bench.json tests/benchmarks/test_bench_flower_engine.py
    .venv/bin/python tests/benchmarks/test_bench_flower_engine.py flower-engine-bench.json

One whole run (``runner.execute``: build, rounds, utility, the cell's mia-loss) of the smoke grid's first
cell (open-source tier, FFT, tiny-gpt2, 4 clients, all sampled) per engine and per number of rounds
(1 and 5), 3 calls each (the median), clients one after another in every engine (``client_batch: 1``,
as Flower's ClientApps train):

- ``inprocess``: TierBench's own loop;
- ``simulation``: ``federation.engine: flower``, Flower's simulation engine (Ray actors, started per run);
- ``deployment``: ``federation.engine: flower-deployment``, a SuperLink and two SuperNodes started as
  processes for the run, the app submitted with ``flwr run``, all stopped after it.

Read per engine (``summary`` does it from the JSON): per-round cost = (median at 5 rounds - median at
1 round) / 4; fixed cost = median at 1 round - per-round cost (build, utility and attack, the same in
every engine, plus the engine's start and stop); start-up overhead = fixed cost - the in-process fixed
cost; per-round overhead = per-round cost / the in-process per-round cost. Needs the ``fl`` extra.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

ENGINES = {"inprocess": "inprocess", "simulation": "flower", "deployment": "flower-deployment"}
ROUNDS = (1, 5)
"""Five rounds, not three (before session 15): a deployed round waits on Flower's 3 s polls, so a run's time
varies by seconds with how its rounds fall between polls, and two rounds of difference did not separate the
per-round cost from that noise (session 15: medians of 3 calls read 5.4 and 9.0 s a round in two runs whose
rounds after the first did the same work)."""


def smoke_cell(engine: str, rounds: int):
    from bench.spec.scenario import load

    scenario = load(Path(__file__).resolve().parents[2] / "scenarios" / "smoke.yaml")[0]
    federation = dataclasses.replace(scenario.federation, rounds=rounds, client_batch=1, engine=ENGINES[engine])
    return dataclasses.replace(scenario, federation=federation)


@pytest.mark.perf
@pytest.mark.parametrize("rounds", ROUNDS)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_run_cost_per_engine(benchmark, engine, rounds):
    pytest.importorskip("flwr")
    from bench.engine import runner

    scenario = smoke_cell(engine, rounds)
    benchmark.extra_info.update(engine=engine, rounds=rounds, cell=f"{scenario.tier.name}/{scenario.method.name}")
    rows = benchmark.pedantic(lambda: runner.execute(scenario, 0), rounds=3, iterations=1)  # the first call also pays imports
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"]
    per_round = {r.metric: r.value for r in rows if r.metric in ("cost.client_s", "cost.server_s")}
    benchmark.extra_info.update(per_round)  # the run's own per-round client and server time (last call)


def summary(results: dict) -> list[str]:
    """Per-round cost, fixed cost and overheads per engine from a ``--benchmark-json`` file's content."""
    median = {(b["extra_info"]["engine"], b["extra_info"]["rounds"]): b["stats"]["median"] for b in results["benchmarks"]}
    costs = {}
    for engine in ENGINES:
        if all((engine, r) in median for r in ROUNDS):
            per_round = (median[engine, ROUNDS[1]] - median[engine, ROUNDS[0]]) / (ROUNDS[1] - ROUNDS[0])
            costs[engine] = (per_round, median[engine, ROUNDS[0]] - per_round)
    base = costs.get("inprocess")
    lines = ["engine      per-round s  fixed s  per-round x inprocess  start-up overhead s"]
    for engine, (per_round, fixed) in costs.items():
        ratio = f"{per_round / base[0]:.2f}" if base and base[0] > 0 else "-"
        extra = f"{fixed - base[1]:.1f}" if base else "-"
        lines.append(f"{engine:<11} {per_round:>11.2f} {fixed:>8.1f} {ratio:>22} {extra:>20}")
    return lines


if __name__ == "__main__":
    print("\n".join(summary(json.loads(Path(sys.argv[1]).read_text()))))
